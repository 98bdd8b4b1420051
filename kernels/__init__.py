"""irforge GPU kernels for in-context reranking, each with a PyTorch reference and a CPU path (needs torch;
the Triton kernels need triton and, outside the interpreter, a CUDA device).

- :func:`block_sparse_attention`: attention over packed prompts with BlockRank's segment rules.
- :func:`attention_mass`: attention probability mass per key (or per segment) from selected rows, without
  materialising the attention matrix (ICR's causal rows, or BlockRank's softmax over document keys).
"""
from .attention_mass import attention_mass
from .block_sparse_attention import block_sparse_attention
from .layout import DOCUMENT, INSTRUCTION, QUERY, SegmentLayout

__all__ = ["SegmentLayout", "INSTRUCTION", "DOCUMENT", "QUERY", "block_sparse_attention", "attention_mass"]
