"""Report: what the incident log says, for IT and the DSL, and the output formats every command shares."""
