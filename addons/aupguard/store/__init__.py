"""Store: the SQLite files aupguard keeps (incidents, exemptions, feedback requests) and their writers."""
