"""Reports: each renders a result of core's result model in one format, and never computes one.

registry.py is the one way in: renderers registered per (result type, format), a
format's modules imported on its first use. console/ and html/ hold a module per
result layout; json.py, junit.py and markdown.py render every result they know.
"""
