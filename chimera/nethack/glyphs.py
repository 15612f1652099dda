"""Glyph classes as lookup tables over all NetHack glyphs (one numpy index per map, no per-cell calls).

NLE shows the remembered map in ``glyphs``: terrain as cmap glyphs, with objects and monsters drawn
on top. The tables say, for each glyph id, what kind of thing it is and whether a hero may step on it.
"""

from __future__ import annotations

import numpy as np
from nle import nethack as nh

N = nh.MAX_GLYPH

# cmap indices (NetHack 3.6 defsym order)
S_STONE, S_VWALL, S_TRWALL = 0, 1, 11
S_NDOOR, S_VODOOR, S_HODOOR, S_VCDOOR, S_HCDOOR = 12, 13, 14, 15, 16
S_BARS, S_TREE, S_ROOM, S_DARKROOM, S_CORR, S_LITCORR = 17, 18, 19, 20, 21, 22
S_UPSTAIR, S_DNSTAIR, S_UPLADDER, S_DNLADDER = 23, 24, 25, 26
S_POOL, S_LAVA = 32, 34
FLOORISH = {S_NDOOR, S_VODOOR, S_HODOOR, S_ROOM, S_DARKROOM, S_CORR, S_LITCORR, S_UPSTAIR, S_DNSTAIR,
            S_UPLADDER, S_DNLADDER, 27, 28, 29, 30, 31, 33, 35, 36}  # altar..fountain, ice, lowered bridge
WALLS = set(range(S_VWALL, S_TRWALL + 1)) | {S_BARS, S_TREE}

# terrain codes kept in the level memory (small ints, one per cell)
UNKNOWN, FLOOR, WALL, DOOR_OPEN, DOOR_CLOSED, DOORWAY, CORRIDOR, STAIRS_DOWN, STAIRS_UP, WATER, TRAP = range(11)
WALKABLE_TERRAIN = np.zeros(11, dtype=bool)
WALKABLE_TERRAIN[[FLOOR, DOOR_OPEN, DOORWAY, CORRIDOR, STAIRS_DOWN, STAIRS_UP]] = True


def _cmap_terrain(c: int) -> int:
    if c == S_STONE:
        return UNKNOWN
    if c in (S_VODOOR, S_HODOOR):
        return DOOR_OPEN
    if c in (S_VCDOOR, S_HCDOOR):
        return DOOR_CLOSED
    if c == S_NDOOR:
        return DOORWAY
    if c in (S_CORR, S_LITCORR):
        return CORRIDOR
    if c in (S_DNSTAIR, S_DNLADDER):
        return STAIRS_DOWN
    if c in (S_UPSTAIR, S_UPLADDER):
        return STAIRS_UP
    if c in (S_POOL, S_LAVA) or c == 39 or c == 40:  # pool, lava, air, cloud
        return WATER
    if c in FLOORISH:
        return FLOOR
    if c in WALLS or c < S_NDOOR:
        return WALL
    return WALL  # raised drawbridge, dark water and effects: not walked on


def _tables() -> dict[str, np.ndarray]:
    terrain = np.full(N, -1, dtype=np.int8)      # terrain shown, -1: something on top hides it
    monster = np.full(N, -1, dtype=np.int16)     # monster index, -1: no monster
    pet = np.zeros(N, dtype=bool)
    obj = np.full(N, -1, dtype=np.int16)         # object index
    corpse = np.full(N, -1, dtype=np.int16)      # monster index of a corpse
    boulder_statue = np.zeros(N, dtype=bool)
    for g in range(N):
        if nh.glyph_is_cmap(g):
            terrain[g] = _cmap_terrain(nh.glyph_to_cmap(g))
        elif nh.glyph_is_trap(g):
            terrain[g] = TRAP
        elif nh.glyph_is_swallow(g):
            terrain[g] = WALL
        elif nh.glyph_is_monster(g) or nh.glyph_is_invisible(g):
            monster[g] = nh.glyph_to_mon(g) if nh.glyph_is_monster(g) else nh.NUMMONS  # NUMMONS: unseen 'I'
            pet[g] = nh.glyph_is_pet(g)
        elif nh.glyph_is_statue(g):
            boulder_statue[g] = True
        elif nh.glyph_is_object(g):
            obj[g] = nh.glyph_to_obj(g)
            if nh.glyph_is_body(g):
                corpse[g] = g - nh.GLYPH_BODY_OFF
            elif nh.OBJ_NAME(nh.objclass(obj[g])) == "boulder":
                boulder_statue[g] = True
    return {"terrain": terrain, "monster": monster, "pet": pet, "obj": obj, "corpse": corpse,
            "blocked": boulder_statue}


TABLES = _tables()
TERRAIN, MONSTER, PET, OBJECT, CORPSE, BLOCKED = (TABLES[k] for k in
                                                  ("terrain", "monster", "pet", "obj", "corpse", "blocked"))


def monster_name(index: int) -> str:
    """The monster's name ('unseen' for a remembered invisible one)."""
    return "unseen" if index >= nh.NUMMONS else nh.permonst(index).mname
