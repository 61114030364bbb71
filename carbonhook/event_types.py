"""CarbonPass event types: the name a rule's `on` takes, the ones CarbonPass is known to send,
and the form of the ids the workers fetch by."""

from __future__ import annotations

import re

CRP_GENERATED = "crp.generated"
BILL_CONFIRMED = "bill.confirmed"
# What CarbonPass is known to send (docs/providers.md): `rules check` warns about a rule on any
# other type, which may never arrive. Which types are processed is the rules' choice alone.
KNOWN_TYPES = frozenset({CRP_GENERATED, BILL_CONFIRMED})
# What carbonhook stores itself: `carbonhook catch-up`'s reading of a site's emissions, processed
# by the `offset_delta` rules on bill events (and by rules on this type).
EMISSIONS_CATCH_UP = "emissions.catch_up"
OWN_TYPES = frozenset({EMISSIONS_CATCH_UP})
# A rule's `on`: an event name, `word.word` in lower case.
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")

# The workers only ever build a URL from an id of this form.
SUBJECT_ID = re.compile(r"(crp|bill)_[A-Za-z0-9_-]{1,64}")
