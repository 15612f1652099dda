"""The CLRS-30 algorithms, each returning ``(result, probes)`` (see ``chimera.clrs.probing``)."""

from chimera.clrs.algorithms.arrays import (
    activity_selector,
    binary_search,
    bubble_sort,
    find_maximum_subarray_kadane,
    heapsort,
    insertion_sort,
    minimum,
    quickselect,
    quicksort,
    task_scheduling,
)
from chimera.clrs.algorithms.dynamic_programming import lcs_length, matrix_chain_order, optimal_bst
from chimera.clrs.algorithms.geometry import graham_scan, jarvis_march, segments_intersect
from chimera.clrs.algorithms.graphs import (
    articulation_points,
    bellman_ford,
    bfs,
    bridges,
    dag_shortest_paths,
    dfs,
    dijkstra,
    floyd_warshall,
    mst_kruskal,
    mst_prim,
    strongly_connected_components,
    topological_sort,
)
from chimera.clrs.algorithms.strings import kmp_matcher, naive_string_matcher

ALGORITHMS = {f.__name__: f for f in (
    insertion_sort, bubble_sort, heapsort, quicksort, minimum, binary_search, quickselect,
    find_maximum_subarray_kadane, activity_selector, task_scheduling, matrix_chain_order, lcs_length, optimal_bst,
    naive_string_matcher, kmp_matcher, segments_intersect, graham_scan, jarvis_march, dfs, bfs, topological_sort,
    articulation_points, bridges, strongly_connected_components, mst_kruskal, mst_prim, bellman_ford, dijkstra,
    dag_shortest_paths, floyd_warshall)}

__all__ = ["ALGORITHMS", *ALGORITHMS]
