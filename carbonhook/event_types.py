"""The CarbonPass event types carbonhook acts on, and the form of the ids it fetches by."""

from __future__ import annotations

import re

CRP_GENERATED = "crp.generated"
BILL_CONFIRMED = "bill.confirmed"
PROCESSED_TYPES = frozenset({CRP_GENERATED, BILL_CONFIRMED})

# The workers only ever build a URL from an id of this form.
SUBJECT_ID = re.compile(r"(crp|bill)_[A-Za-z0-9_-]{1,64}")
