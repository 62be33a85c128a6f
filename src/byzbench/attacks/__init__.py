"""Attacks: registered classes crafting the Byzantine rows from an `AttackerView`."""

from __future__ import annotations

from byzbench.attacks.base import ATTACKS, KNOWLEDGE_LEVELS, Attack, AttackEnv, AttackerView

__all__ = ["ATTACKS", "KNOWLEDGE_LEVELS", "Attack", "AttackEnv", "AttackerView"]
