"""Fuzzing the readers and the predictor (issue 10, item 4): whatever a spec says, ``summary``
returns a result or one ``ModelsizeError`` — never another exception (a traceback for the user).

Derandomized and a fixed number of examples, so the run takes seconds and fails the same way
twice; ``benchmarks/test_fuzz_long.py`` runs many more. Generated: whole specs (a random chain of
registered layers with random arguments, valid-looking and not), mutations of real Keras
``to_json()`` documents, and random text as YAML and JSON.
"""
import copy
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from profiler.engine.predict import predict
from profiler.errors import ModelsizeError
from profiler.frontends import spec as S
from profiler.rules.catalog import all_rules

RULES = all_rules()
KERAS = sorted((Path(__file__).parent / "keras2").glob("*.json"))
#: examples per test: 150 in CI (seconds); benchmarks/test_fuzz_long.py asks for many more, random
EXAMPLES = int(os.environ.get("MODELSIZE_FUZZ_EXAMPLES", "150"))
CI = settings(max_examples=EXAMPLES, derandomize=EXAMPLES <= 150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

small_int = st.integers(min_value=-2, max_value=40)
scalar = st.one_of(small_int, st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(),
                   st.none(), st.sampled_from(["same", "valid", "relu", "softmax", "channels_last", "x", ""]))
value = st.one_of(scalar, st.lists(small_int, max_size=4), st.dictionaries(st.text(max_size=5), scalar, max_size=2))


@st.composite
def layer(draw):
    name = draw(st.sampled_from(sorted(RULES)))
    args = {}
    for arg in RULES[name].args:
        if draw(st.booleans()):
            args[arg.name] = draw(value)
    if draw(st.integers(0, 9)) == 0:   # now and then a key the layer does not take
        args[draw(st.text(min_size=1, max_size=6))] = draw(value)
    return {name: args}


specs = st.fixed_dictionaries({
    "input_shape": st.lists(st.integers(min_value=-1, max_value=64), min_size=0, max_size=4),
    "layers": st.lists(layer(), min_size=0, max_size=6),
}, optional={"name": st.text(max_size=8), "input_dtype": st.sampled_from(["float", "int64", "x"])})


def _summary_or_one_error(load):
    try:
        spec = load()
        for batch in (1, 3):
            predict(spec, batch=batch, optimizers=("sgd", "adam"), threads=2)
    except ModelsizeError as error:
        assert "\n" not in str(error), str(error)


@CI
@given(specs)
def test_random_specs_predict_or_fail_in_one_line(data):
    _summary_or_one_error(lambda: S.from_dict(data, source="fuzz.yaml"))


@CI
@given(st.text(max_size=300))
def test_random_text_as_yaml_and_json(text):
    _summary_or_one_error(lambda: S.loads(text, source="fuzz.yaml"))
    _summary_or_one_error(lambda: S.loads(text, source="fuzz.json", as_json=True))


def _paths(tree, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, item in tree.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from _paths(item, (*prefix, i))


DOCUMENTS = [json.loads(p.read_text()) for p in KERAS]


@CI
@given(st.integers(0, len(DOCUMENTS) - 1), st.data())
def test_mutated_keras_documents(which, data):
    doc = copy.deepcopy(DOCUMENTS[which])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(value)
    _summary_or_one_error(lambda: S.loads(json.dumps(doc), source="fuzz-keras.json", as_json=True))
