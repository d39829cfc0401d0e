"""What the CPU allocator saw inside one operator's kernel, from the profiler's events: for tests
that check a kernel law allocation by allocation."""
from profiler.measuring.memory_trace import _event_tree, profiled


def allocations_inside(fn, kernel: str) -> list[int]:
    """Bytes of each allocation made directly by ``kernel`` (e.g. "aten::mkldnn_rnn_layer")
    while ``fn`` runs, in order; not its child operators' (an ``aten::add``, ``aten::empty``)."""
    found = []

    def walk(node, parent):
        if node.name == "[memory]":
            if parent == kernel and node.extra_fields.alloc_size > 0:
                found.append((node.start_time_ns, node.extra_fields.alloc_size))
            return
        for child in node.children:
            walk(child, node.name)
    for root in _event_tree(profiled(fn)):
        walk(root, None)
    return [n for _, n in sorted(found)]
