"""The words aupguard's rooms share, each defined once: severities and category names.

A category is a name a list, the policy or aupguard itself gives to what a URL is. Most come
from lists; a few are aupguard's own (`INCIDENT_CATEGORIES`), filed with no list behind them.
"""

from __future__ import annotations

import re

SEVERITIES = ("low", "medium", "high", "critical")  # in increasing order

CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# aupguard's own categories, each with a meaning in the code.
CIRCUMVENTION = "circumvention"  # every attempt to get round the filter is filed under it
CIRCUMVENTION_SEVERITY = "medium"  # ... with at least this severity
FILTER_ERROR = "filter_error"  # the filter could not decide (fails closed for groups that say so)
DOWNLOAD = "download"  # a file type or size the group may not download
NOT_IN_WALLED_GARDEN = "not_in_walled_garden"  # outside the only sites an early-years group may visit
CLASSROOM_LOCK = "classroom_lock"  # blocked by a teacher's classroom override
INCIDENT_CATEGORIES = (CIRCUMVENTION, FILTER_ERROR, DOWNLOAD, NOT_IN_WALLED_GARDEN, CLASSROOM_LOCK)

# List categories that are themselves ways round the filter: a block by one is a circumvention
# attempt, and reports count them with CIRCUMVENTION.
CIRCUMVENTION_LIST_CATEGORIES = ("anonymizers", "vpn", "doh", "remote_access")
CIRCUMVENTION_CATEGORIES = (*CIRCUMVENTION_LIST_CATEGORIES, CIRCUMVENTION)

# File types a group's `downloads.block_types` may name (matched by Content-Type and extension).
DOWNLOAD_TYPES = ("executable", "installer", "disk_image", "apk", "torrent", "archive", "script")

# Every category the code, the bundled lists or the UT1 mapping can produce (ARCHITECTURE.md):
# a policy must give each a label, severity and reason, so a block page or
# incident never meets a category it cannot explain. Schools may add their own.
CATEGORIES = (
    # illegal content (IWF/CTIRU-style feeds a school is licensed to receive): the mandatory tier
    "illegal",
    # harmful
    "adult", "adult_mixed", "gambling", "hate", "violence", "drugs", "self_harm", "extremism",
    "malware", "phishing", "piracy", "hacking", "cheating",
    # circumvention
    *CIRCUMVENTION_LIST_CATEGORIES,
    # communication
    "social_networks", "webmail", "chat", "dating", "forums",
    # leisure
    "games", "streaming", "shopping",
    # sensitive: never decrypted
    "banking", "health",
    # other
    "downloads", "filehosting", "shorteners", "ads", "school_allow",
    # the early years walled garden: the only sites its groups may visit
    "early_years_allow",
    *INCIDENT_CATEGORIES,
)  # fmt: skip


def severity_rank(severity: str) -> int:
    """0 for "low" up to 3 for "critical"; raises ValueError for anything else."""
    return SEVERITIES.index(severity)
