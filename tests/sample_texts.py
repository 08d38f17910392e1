"""Little text corpora that tiny test tokenizers are trained on."""

TINY_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the derivative of x squared? it is two x",
    "def add(a, b): return a + b",
    "the patient presents with fever and cough",
    "the contract is void if signed under duress",
    "0123456789 1 + 2 = 3 and 7 * 6 = 42",
] * 20
