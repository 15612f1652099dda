"""Facts about monsters and food the strategies decide by (from NetHack's monster flags and names)."""

from __future__ import annotations

from nle import nethack as nh

M1_ACID, M1_POIS = 0x08000000, 0x10000000
M2_UNDEAD, M2_WERE, M2_HUMAN, M2_ELF, M2_DWARF, M2_GNOME, M2_DOMESTIC = 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x00400000
# undead rot, lycanthropy, cannibalism for the races a hero can be, aggravation for pets
BAD_FLAGS2 = M2_UNDEAD | M2_WERE | M2_HUMAN | M2_ELF | M2_DWARF | M2_GNOME | M2_DOMESTIC

# touching, killing or hitting these in melee hurts the hero more than it helps
NO_MELEE = ("floating eye", "gas spore", "brown mold", "yellow mold", "green mold", "red mold",
            "blue jelly", "spotted jelly", "ochre jelly", "cockatrice", "chickatrice")
# corpses that kill, stone, slime, stun or hallucinate whatever the hero's resistances
BAD_CORPSES = ("cockatrice", "chickatrice", "Medusa", "green slime", "bat", "violet fungus", "Death", "Famine",
               "Pestilence", "lizard")  # lizard is safe but better kept for later; not worth a turn here
CORPSE_FRESH_TURNS = 30
S_HUMAN = 53  # the monster class of "@" (monsym.h; permonst.mlet holds it as a one-character string)
# permanent food: never rots, safe to carry (eggs can be cockatrice eggs, tins take long to open)
NOT_PERMANENT = ("corpse", "egg", "tin")


def name(index: int) -> str:
    return nh.permonst(index).mname if 0 <= index < nh.NUMMONS else "unseen"


def avoid_melee(index: int) -> bool:
    """Whether hitting this monster in melee is a bad idea (passive attacks, explosions, stoning)."""
    return name(index) in NO_MELEE


def safe_corpse(index: int, turn_killed: int, turn: int) -> bool:
    """A corpse of this kind, killed at ``turn_killed``, is safe to eat now (fresh, not poisonous / cursed)."""
    if not 0 <= index < nh.NUMMONS or turn - turn_killed > CORPSE_FRESH_TURNS:
        return False
    pm = nh.permonst(index)
    if pm.mflags1 & (M1_POIS | M1_ACID) or pm.mflags2 & BAD_FLAGS2:
        return False
    return not any(b in pm.mname for b in BAD_CORPSES) and "were" not in pm.mname


def permanent_food(item_name: str) -> bool:
    return not any(w in item_name for w in NOT_PERMANENT)


def ignores_elbereth(index: int) -> bool:
    """Humans (and elves, '@') and minotaurs are not scared by an engraved Elbereth; nor are shopkeepers,
    guards and priests, who are '@' too."""
    if not 0 <= index < nh.NUMMONS:
        return False
    pm = nh.permonst(index)
    return ord(pm.mlet) == S_HUMAN or pm.mname == "minotaur"
