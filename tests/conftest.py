"""Hypothesis profiles: the default keeps the suite fast; HYPOTHESIS_PROFILE=deep
searches twenty times harder (use it before changing the core)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
