"""What CPU kernels allocate and free inside one operator call (their workspace), per backend and
kernel family: facts no tensor-level view can see, written once here so that the spec path's
layer rules and the torch path's per-operator table (``aten_cpu``) book the same bytes.

``cpu_conv`` (which convolution kernel torch picks), ``conv_call`` (one convolution as the kernels
see it), ``im2col`` (torch's own convolutions), ``onednn`` (oneDNN's scratchpad bookkeeping),
``onednn_conv`` and ``onednn_conv_weights`` (oneDNN convolutions), ``onednn_matmul`` (oneDNN's
bfloat16 matmuls), ``onednn_rnn`` (oneDNN's LSTM), ``cpu_attention`` (the fused attention paths
and scaled dot-product attention's flash kernel), ``cpu_norm`` (batch and layer norm),
``cpu_reduce`` (``mean``), ``aten_cpu`` (the table keyed by aten operator).
"""
