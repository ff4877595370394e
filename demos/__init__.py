"""Gradio demos: thin apps over the same inference paths the tests exercise."""
