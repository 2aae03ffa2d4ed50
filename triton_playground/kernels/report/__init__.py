"""The static sm_90 report: what every kernel of every op compiles to on an H100, under every config.

    triton-playground report [OP ...|all] [--arch sm_90] [--out report.csv] [--dtype bf16 fp32] [--peers] [--pruned]

No GPU needed: each op's public function runs in compile-only mode (``compile_only.py``, shared with
``tests/compile_check.py``) at the GPU sweep's shapes (``shapes.py``), every launch compiles down to a cubin, and
Triton's own ``cuobjdump`` / ``nvdisasm`` are read (``sass.py``). On a GPU of the target arch the registers and
local memory come from the loaded kernels instead (``n_regs``, ``n_spills``). Parsed results are cached on disk
by kernel hash (beside Triton's cache, or ``$KERNELS_REPORT_CACHE``); Triton caches the cubins.

One row per (op, provider, shape, dtype, kernel, variant, config). Reading it:

* ``provider``: ``ours``, or with ``--peers`` a Triton peer of the op (``liger``, ``fla``: ``ops/<op>/peers.py``)
  whose kernels are compiled at the same shapes (``peers.py`` here: one row per kernel it compiles, at the
  config it launches with; an autotuned peer kernel at its first config, as choosing needs a GPU).

* ``shape`` / ``seqlen``: the sweep panel (the dims that vary across the op's panels) and the sequence length it
  was compiled at (the shortest; a longer one when only it launches a variant, e.g. a window that hides keys).
* ``variant``: the constexprs the caller passed besides the config (the MLP GEMM's epilogue: ``HAS_BIAS ACT=2
  STORE_PRE`` is the up-projection, ``DACT=2 BIAS_GRAD`` the dh GEMM), plus what else Triton specialised on
  when that tells two compiled kernels apart: ``s_am=1`` (a unit stride: a transposed operand), ``N%16=0`` (an
  integer's divisibility), ``X:float32`` (an input's dtype).
* ``config`` (``def`` ``*``: the kernel's default); ``pruned``: the sweep sequence lengths at which the prune
  rule drops the config (``dropped``: all of them); ``may_pick``: whether the autotuner can pick it there. A
  config dropped at every length of a shape never runs there: it compiles at its kernel's first launch only (so
  every config of every kernel has its numbers once), and its other rows have none (``source``: ``not
  compiled``); ``--pruned`` compiles them too.
* ``regs``: registers a thread (255 is the ceiling). ``spill_stores`` / ``spill_loads``: bytes of registers
  spilled to local memory and reloaded, as ``ptxas -v`` counts them: non-zero means the kernel spills.
  ``stack``: its stack frame in bytes, and ``stl`` / ``ldl`` local stores / loads in the SASS: the spills plus
  any other local memory (libdevice's sin/cos keep a 28-byte array there for their rare huge-argument path,
  which is why every RoPE config shows a 32-byte stack without spilling).
* ``smem``: dynamic shared memory (Triton's pipeline buffers) in bytes; ``smem_static``: cuobjdump's SHARED.
* ``occ_warps`` / ``occ_limit``: resident warps per SM on an H100 (of 64) and what bounds them: ``regs``
  (65536 a SM, allocated per warp in 256s), ``smem`` (228 KB a SM, +1 KB reserved per block), ``warps`` (the
  64 cap) or ``blocks`` (32 a SM). A GEMM or attention tile at 8 warps / 1 block is normal; 4 warps is thin.
* tensor cores: ``hgmma`` (wgmma, Hopper's full rate) / ``hmma`` (mma.sync, Ampere's). A bf16 GEMM tile of 64+
  rows on ``hmma`` leaves most of an H100's tensor throughput unused.
* global loads: ``utmaldg`` (TMA) / ``ldgsts`` (cp.async: global to shared, pipelined) / ``ldg`` (into
  registers). A GEMM whose main loop feeds on ``ldg`` is not pipelined through shared memory.
* ``bar``: CTA barriers; ``sass``: SASS instructions (NOP padding excluded); ``error``: why a row has no numbers
  (a config past the shared-memory limit still compiles: its ``occ_limit`` says ``smem>block``).
"""
