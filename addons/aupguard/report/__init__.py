"""Report: what the incident log says, for IT and the DSL, and the output formats every command shares.

summary   the IT summary (`aupguard report`) and the block page's requests (`report --requests`)
dsl       the CSV export of flagged incidents for the Designated Safeguarding Lead
explain   the whole decision for one URL (`aupguard explain`)
output    escaping (visible, safe_cell), rows as a table, CSV or JSON lines, private output files
"""
