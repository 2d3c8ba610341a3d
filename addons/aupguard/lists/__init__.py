"""Request-time list code: the list model, reading list folders, the UT1 mapping, the compiled index and its served copy.

Importing lists and compiling the index are offline work: `aupguard.offline`.
"""
