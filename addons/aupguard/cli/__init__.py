"""The `aupguard` command: one module per command group, one error handler.

main      the group, and the one handler that turns every explained error into one line
options   what the commands share: --config, --index, --db, --store, --format, --out, times, who is asking
run       `run`: check the policy, compile the index if needed, start the proxy
classify  `classify` and `explain`: what the proxy would do with a URL, and why (the proxy's engine)
lists     `lists import`, `lists compile`, `lists update`
report    `report`, `dsl-export`, `purge`
exempt    `exempt add|list|revoke|audit`, and the listing and recording `classroom` shares
classroom `classroom set|list|end`
"""
