"""aupguard: a school web filter and safeguarding monitor, built as mitmproxy addons.

The data path runs one way, and each stage has its room (ARCHITECTURE.md has a line per module):

    request -> identify -> classify -> decide -> act -> record -> report
               core/identify  core/classify  core/decide  proxy/  store/  report/

`core/` is plain Python with no I/O: `core.engine.Engine` runs identify, classify and decide for
one request, so the proxy (`proxy/`, the only room that imports mitmproxy) and the commands
(`cli/`) decide alike. `runtime.load_engine` builds that Engine from the files `config/` and
`lists/` read; `offline/` prepares the lists; `base/` holds what every room shares.
"""

__version__ = "0.1.0"
