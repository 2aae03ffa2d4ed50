"""``@triton.jit`` helpers for how programs map onto output tiles."""

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Program id -> (pid_m, pid_n) in grouped ordering (Triton's matmul tutorial).

    Programs 0, 1, ... walk ``GROUP_M`` row-tiles down one column-tile, then the next column-tile, so a wave of
    concurrent programs touches ``GROUP_M`` row-tiles of A and few column-tiles of B while both are in L2,
    instead of sweeping a whole row of B tiles per row-tile of A. The last group may be shorter.
    """
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n
