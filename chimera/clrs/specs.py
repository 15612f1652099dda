"""The CLRS-30 spec table: for every algorithm, each feature's (stage, location, type).

Names of algorithms and features, and their stages, locations and types, are the official ones
of the CLRS benchmark (Veličković et al. 2022), so that data, models and scores line up with it.
The table is written once below, one feature per line, and parsed into ``SPECS``.
"""

from __future__ import annotations

from types import MappingProxyType


class Stage:
    INPUT, OUTPUT, HINT = "input", "output", "hint"


class Location:
    NODE, EDGE, GRAPH = "node", "edge", "graph"


class Type:
    SCALAR = "scalar"
    CATEGORICAL = "categorical"
    MASK = "mask"
    MASK_ONE = "mask_one"
    POINTER = "pointer"
    SHOULD_BE_PERMUTATION = "should_be_permutation"
    PERMUTATION_POINTER = "permutation_pointer"
    SOFT_POINTER = "soft_pointer"


class OutputClass:
    """Values of mask-like outputs: positive, negative, and masked (not part of the answer)."""

    POSITIVE, NEGATIVE, MASKED = 1, 0, -1


OUTPUT_MASKED = OutputClass.MASKED

STAGES = (Stage.INPUT, Stage.OUTPUT, Stage.HINT)
LOCATIONS = (Location.NODE, Location.EDGE, Location.GRAPH)
TYPES = tuple(v for k, v in vars(Type).items() if k.isupper())

# The eight algorithm families of the paper, for experiments that must cover all of them.
FAMILIES = {
    "sorting": ("insertion_sort", "bubble_sort", "heapsort", "quicksort"),
    "searching": ("minimum", "binary_search", "quickselect"),
    "divide_and_conquer": ("find_maximum_subarray_kadane",),
    "greedy": ("activity_selector", "task_scheduling"),
    "dynamic_programming": ("matrix_chain_order", "lcs_length", "optimal_bst"),
    "graphs": ("dfs", "bfs", "topological_sort", "articulation_points", "bridges", "strongly_connected_components",
               "mst_kruskal", "mst_prim", "bellman_ford", "dijkstra", "dag_shortest_paths", "floyd_warshall"),
    "strings": ("naive_string_matcher", "kmp_matcher"),
    "geometry": ("segments_intersect", "graham_scan", "jarvis_march"),
}

_TABLE = """
articulation_points
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    is_cut          output node  mask
    is_cut_h        hint   node  mask
    pi_h            hint   node  pointer
    color           hint   node  categorical
    d               hint   node  scalar
    f               hint   node  scalar
    low             hint   node  scalar
    child_cnt       hint   node  scalar
    s_prev          hint   node  pointer
    s               hint   node  mask_one
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
    time            hint   graph scalar
activity_selector
    pos             input  node  scalar
    s               input  node  scalar
    f               input  node  scalar
    selected        output node  mask
    pred_h          hint   node  pointer
    selected_h      hint   node  mask
    m               hint   node  mask_one
    k               hint   node  mask_one
bellman_ford
    pos             input  node  scalar
    s               input  node  mask_one
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    pi_h            hint   node  pointer
    d               hint   node  scalar
    msk             hint   node  mask
bfs
    pos             input  node  scalar
    s               input  node  mask_one
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    reach_h         hint   node  mask
    pi_h            hint   node  pointer
binary_search
    pos             input  node  scalar
    key             input  node  scalar
    target          input  graph scalar
    return          output node  mask_one
    pred_h          hint   node  pointer
    low             hint   node  mask_one
    high            hint   node  mask_one
    mid             hint   node  mask_one
bridges
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    is_bridge       output edge  mask
    is_bridge_h     hint   edge  mask
    pi_h            hint   node  pointer
    color           hint   node  categorical
    d               hint   node  scalar
    f               hint   node  scalar
    low             hint   node  scalar
    s_prev          hint   node  pointer
    s               hint   node  mask_one
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
    time            hint   graph scalar
bubble_sort
    pos             input  node  scalar
    key             input  node  scalar
    pred            output node  should_be_permutation
    pred_h          hint   node  pointer
    i               hint   node  mask_one
    j               hint   node  mask_one
dag_shortest_paths
    pos             input  node  scalar
    s               input  node  mask_one
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    pi_h            hint   node  pointer
    d               hint   node  scalar
    mark            hint   node  mask
    topo_h          hint   node  pointer
    topo_head_h     hint   node  mask_one
    color           hint   node  categorical
    s_prev          hint   node  pointer
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
    phase           hint   graph mask
dfs
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    pi_h            hint   node  pointer
    color           hint   node  categorical
    d               hint   node  scalar
    f               hint   node  scalar
    s_prev          hint   node  pointer
    s               hint   node  mask_one
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
    time            hint   graph scalar
dijkstra
    pos             input  node  scalar
    s               input  node  mask_one
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    pi_h            hint   node  pointer
    d               hint   node  scalar
    mark            hint   node  mask
    in_queue        hint   node  mask
    u               hint   node  mask_one
find_maximum_subarray_kadane
    pos             input  node  scalar
    key             input  node  scalar
    start           output node  mask_one
    end             output node  mask_one
    pred_h          hint   node  pointer
    best_low        hint   node  mask_one
    best_high       hint   node  mask_one
    best_sum        hint   graph scalar
    i               hint   node  mask_one
    j               hint   node  mask_one
    sum             hint   graph scalar
floyd_warshall
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    Pi              output edge  pointer
    Pi_h            hint   edge  pointer
    D               hint   edge  scalar
    msk             hint   edge  mask
    k               hint   node  mask_one
graham_scan
    pos             input  node  scalar
    x               input  node  scalar
    y               input  node  scalar
    in_hull         output node  mask
    best            hint   node  mask_one
    atans           hint   node  scalar
    in_hull_h       hint   node  mask
    stack_prev      hint   node  pointer
    last_stack      hint   node  mask_one
    i               hint   node  mask_one
    phase           hint   graph categorical
heapsort
    pos             input  node  scalar
    key             input  node  scalar
    pred            output node  should_be_permutation
    pred_h          hint   node  pointer
    parent          hint   node  pointer
    i               hint   node  mask_one
    j               hint   node  mask_one
    largest         hint   node  mask_one
    heap_size       hint   node  mask_one
    phase           hint   graph categorical
insertion_sort
    pos             input  node  scalar
    key             input  node  scalar
    pred            output node  should_be_permutation
    pred_h          hint   node  pointer
    i               hint   node  mask_one
    j               hint   node  mask_one
jarvis_march
    pos             input  node  scalar
    x               input  node  scalar
    y               input  node  scalar
    in_hull         output node  mask
    pred_h          hint   node  pointer
    in_hull_h       hint   node  mask
    best            hint   node  mask_one
    last_point      hint   node  mask_one
    endpoint        hint   node  mask_one
    i               hint   node  mask_one
    phase           hint   graph categorical
kmp_matcher
    string          input  node  mask
    pos             input  node  scalar
    key             input  node  categorical
    match           output node  mask_one
    pred_h          hint   node  pointer
    pi              hint   node  pointer
    is_reset        hint   node  mask
    k               hint   node  mask_one
    k_reset         hint   graph mask
    q               hint   node  mask_one
    q_reset         hint   graph mask
    s               hint   node  mask_one
    i               hint   node  mask_one
    phase           hint   graph mask
lcs_length
    string          input  node  mask
    pos             input  node  scalar
    key             input  node  categorical
    b               output edge  categorical
    pred_h          hint   node  pointer
    b_h             hint   edge  categorical
    c               hint   edge  scalar
matrix_chain_order
    pos             input  node  scalar
    p               input  node  scalar
    s               output edge  pointer
    pred_h          hint   node  pointer
    m               hint   edge  scalar
    s_h             hint   edge  pointer
    msk             hint   edge  mask
minimum
    pos             input  node  scalar
    key             input  node  scalar
    min             output node  mask_one
    pred_h          hint   node  pointer
    min_h           hint   node  mask_one
    i               hint   node  mask_one
mst_kruskal
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    in_mst          output edge  mask
    in_mst_h        hint   edge  mask
    pi              hint   node  pointer
    u               hint   node  mask_one
    v               hint   node  mask_one
    root_u          hint   node  mask_one
    root_v          hint   node  mask_one
    mask_u          hint   node  mask
    mask_v          hint   node  mask
    phase           hint   graph categorical
mst_prim
    pos             input  node  scalar
    s               input  node  mask_one
    A               input  edge  scalar
    adj             input  edge  mask
    pi              output node  pointer
    pi_h            hint   node  pointer
    key             hint   node  scalar
    mark            hint   node  mask
    in_queue        hint   node  mask
    u               hint   node  mask_one
naive_string_matcher
    string          input  node  mask
    pos             input  node  scalar
    key             input  node  categorical
    match           output node  mask_one
    pred_h          hint   node  pointer
    s               hint   node  mask_one
    i               hint   node  mask_one
    j               hint   node  mask_one
optimal_bst
    pos             input  node  scalar
    p               input  node  scalar
    q               input  node  scalar
    root            output edge  pointer
    pred_h          hint   node  pointer
    root_h          hint   edge  pointer
    e               hint   edge  scalar
    w               hint   edge  scalar
    msk             hint   edge  mask
quickselect
    pos             input  node  scalar
    key             input  node  scalar
    median          output node  mask_one
    pred_h          hint   node  pointer
    p               hint   node  mask_one
    r               hint   node  mask_one
    i               hint   node  mask_one
    j               hint   node  mask_one
    i_rank          hint   graph scalar
    target          hint   graph scalar
    pivot           hint   node  mask_one
quicksort
    pos             input  node  scalar
    key             input  node  scalar
    pred            output node  should_be_permutation
    pred_h          hint   node  pointer
    p               hint   node  mask_one
    r               hint   node  mask_one
    i               hint   node  mask_one
    j               hint   node  mask_one
segments_intersect
    pos             input  node  scalar
    x               input  node  scalar
    y               input  node  scalar
    intersect       output graph mask
    i               hint   node  mask_one
    j               hint   node  mask_one
    k               hint   node  mask_one
    dir             hint   node  scalar
    on_seg          hint   node  mask
strongly_connected_components
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    scc_id          output node  pointer
    scc_id_h        hint   node  pointer
    A_t             hint   edge  mask
    color           hint   node  categorical
    d               hint   node  scalar
    f               hint   node  scalar
    s_prev          hint   node  pointer
    s               hint   node  mask_one
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
    time            hint   graph scalar
    phase           hint   graph mask
task_scheduling
    pos             input  node  scalar
    d               input  node  scalar
    w               input  node  scalar
    selected        output node  mask
    pred_h          hint   node  pointer
    selected_h      hint   node  mask
    i               hint   node  mask_one
    t               hint   graph scalar
topological_sort
    pos             input  node  scalar
    A               input  edge  scalar
    adj             input  edge  mask
    topo            output node  pointer
    topo_head       output node  mask_one
    topo_h          hint   node  pointer
    topo_head_h     hint   node  mask_one
    color           hint   node  categorical
    s_prev          hint   node  pointer
    s               hint   node  mask_one
    u               hint   node  mask_one
    v               hint   node  mask_one
    s_last          hint   node  mask_one
"""


def _parse(table: str) -> dict[str, dict[str, tuple[str, str, str]]]:
    specs: dict[str, dict[str, tuple[str, str, str]]] = {}
    current: dict[str, tuple[str, str, str]] = {}
    for line in table.strip().splitlines():
        if not line.startswith(" "):
            current = specs.setdefault(line.strip(), {})
            continue
        name, stage, loc, type_ = line.split()
        assert stage in STAGES and loc in LOCATIONS and type_ in TYPES, line
        current[name] = (stage, loc, type_)
    return specs


SPECS = MappingProxyType(_parse(_TABLE))
CLRS_30_ALGS = tuple(SPECS)
assert len(CLRS_30_ALGS) == 30 and sorted(sum(FAMILIES.values(), ())) == sorted(CLRS_30_ALGS)
