"""aupguard: a school web filter built as mitmproxy addons.

The data path runs one way, one module per stage:

    request -> identify -> classify -> decide -> act -> record -> report
               identify.py classify.py decide.py  addon.py incidents.py report.py

`engine.py` ties identify/classify/decide together as plain Python, so the
mitmproxy glue in `addon.py` and the `aupguard classify` command share one path.
"""

__version__ = "0.1.0"
