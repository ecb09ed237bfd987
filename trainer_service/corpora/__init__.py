"""Corpora: uploads, the content-addressed library and the built-in corpus builders."""
