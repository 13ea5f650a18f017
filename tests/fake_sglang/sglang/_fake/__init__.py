"""Fake SGLang 0.5.23: a stdlib-only test double for sglprep.

Ground truth: ``/work/shared/reference/sglang-facts.md`` (cited as §N below).

Launching
=========
Put ``tests/fake_sglang`` on ``PYTHONPATH``; no third-party package is imported::

    PYTHONPATH=tests/fake_sglang python -m sglang.launch_server --model-path M --port P ...
    PYTHONPATH=tests/fake_sglang python -m sglang.compile_deep_gemm --model-path M ... [--timeout N]
    PYTHONPATH=tests/fake_sglang python -c "from sglang.srt.server_args import ServerArgs, prepare_server_args; prepare_server_args([...])"
    python -c "import sglang; print(sglang.__version__)"          # 0.5.23

``--model-path`` may be any directory; ``config.json`` inside it is read if
present (``architectures``, ``model_type``, ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``intermediate_size``, ``vocab_size``,
``max_position_embeddings``, ``torch_dtype``, ``num_experts`` /
``num_local_experts`` / ``n_routed_experts``, ``moe_intermediate_size``,
``quantization_config.{quant_method,weight_block_size}``).  Without it the
model is a Llama-3.1-8B-shaped bf16 dense model.

Parser (``sglang.srt.server_args``)
===================================
``prog="sglang serve"``, ``allow_abbrev=True``, the flag table of §2, store_true
bools, ``human_readable_int`` (``8k``=8000, ``8Ki``=8192), deprecated
``--disable-cuda-graph`` (warns, still disables both graphs), ``--config`` (flat
YAML/JSON merged in front of the CLI).  Errors exit 2 with argparse's message.
Flags outside §2 are rejected, so a real-but-unlisted flag fails here.

Startup (launch_server)
=======================
1. One JSON line appended to ``$FAKE_SGLANG_LAUNCH_LOG`` (if set), then parse.
2. A child process is spawned: argv[0] ``sglang::scheduler_TP0`` (comm
   ``sglang::schedul``), same process group, SIGKILLed by the kernel when the
   parent dies (PR_SET_PDEATHSIG) unless ``FAKE_SGLANG_ORPHAN_CHILD=1``.
3. "Load" with NOTHING listening on the port: ``server_args=...``, ``Load weight
   begin/end``, ``KV Cache is allocated. dtype: torch.float8_e4m3fn, #tokens: N,
   K size: X GB, V size: Y GB``, ``Memory pool end``; cache writes (below);
   ``Capture target decode CUDA graph begin. backend=full`` / ``... end. bs=[...],
   elapsed=... s, mem usage=... GB, avail mem=... GB.`` (unless decode graphs
   are disabled) and the same for the prefill graph (backend ``breakable``).
   Logs go to stderr in sglang's format ``[YYYY-mm-dd HH:MM:SS TP0] msg``;
   uvicorn-style access lines go to stdout.  ``--log-level warning`` hides INFO.
4. Named ``--warmups`` (voice_chat, prefill_shapes; unknown ->
   ``Could not find custom warmup X``), counted in metrics, before the bind.
5. Bind ``--host``/``--port`` (``http.server.ThreadingHTTPServer``); a busy
   port logs ``[Errno 98] error while attempting to bind ...`` and exits 1.
6. Built-in warmup thread: polls ``/model_info``, sleeps
   ``FAKE_SGLANG_WARMUP_S``, ``POST /generate`` ("The capital city of France
   is", or input_ids [10,11,12] with ``--skip-tokenizer-init``; 8 new tokens;
   counted in metrics).  Then ``The server is fired up and ready to roll!``.
   ``--skip-server-warmup`` marks the server up at once (still prints the line).
   A failed warmup logs ``Initialization failed. warmup error: ...`` and SIGKILLs
   the child and itself (returncode -9), like ``kill_process_tree``.
7. SIGTERM/SIGINT: stop HTTP, SIGKILL the child, exit 0.  If the child dies on
   its own the server logs ``Received sigquit from a child process...`` and
   SIGKILLs itself.

Endpoints: ``/ready`` (503 -> 200 once up), ``/health`` and ``/health_generate``
(503 while starting; 200 after, a 1-token generation that is NOT counted),
``/ping``, ``/model_info`` (keys of §4), ``/get_model_info`` (same + deprecation
warning every call), ``/server_info`` (+ deprecated ``/get_server_info``),
``/v1/models``, ``POST|PUT /generate`` (text or input_ids, single or batch,
``sampling_params`` dict or list, ``stream`` -> SSE ending ``data: [DONE]``;
400 ``{"error": "..."}`` on a bad body; prompt tokens = len(input_ids) or the
number of whitespace-separated words), ``/flush_cache``, ``/metrics`` only
with ``--enable-metrics`` (404 ``{"detail": "Not Found"}`` otherwise).
``--api-key`` requires ``Authorization: Bearer <key>`` except on health/ready/
ping/metrics.  ``/metrics`` renders like prometheus_client's multiprocess mode:
``sglang:prompt_tokens_total``, ``sglang:generation_tokens_total``,
``sglang:num_requests_total`` (labels engine_type="unified", is_streaming,
model_name), ``sglang:cached_tokens_total``, ``sglang:e2e_request_latency_seconds``
and ``sglang:time_to_first_token_seconds`` histograms,
``sglang:startup_time_seconds{phase=load_weight|kv_cache_allocation|scheduler_e2e|tokenizer_e2e}``,
and scheduler gauges (``num_running_reqs``, ``num_queue_reqs``,
``gen_throughput``, ``cache_hit_rate``, ``token_usage``, ``num_used_tokens``,
``max_total_num_tokens``, ``*_memory_usage_gb``, ``is_cuda_graph``) with
tp_rank/pp_rank/moe_ep_rank labels.

Cache writes (small real files, deterministic names: a warm rerun adds nothing)
===============================================================================
Directories come from the environment after ``import sglang`` applied its
setdefault redirect (§3.1); the ``cache_dirs`` of the launch log shows them.

* ``$CUDA_CACHE_PATH`` (default ``$SGLANG_CACHE_DIR/nv``): ``ComputeCache/index``
  + 3 entries ``ComputeCache/<x>/<yz>/<hash>``, every run.
* ``$TRITON_CACHE_DIR`` (default ``$SGLANG_CACHE_DIR/triton``):
  ``<52-char base32>/<kernel>.{cubin,ptx,json}`` + ``__grp__<kernel>.json`` and a
  ``cuda_utils.so`` dir.  Every run: ``write_req_to_token_pool_triton``,
  ``get_last_loc_triton``; ``--attention-backend triton``: ``_fwd_kernel`` etc.;
  flashinfer: ``create_flashinfer_kv_indices_triton``; Triton MoE:
  ``fused_moe_kernel``; torch.compile: ``triton_*`` kernels per graph.
* ``$TORCHINDUCTOR_CACHE_DIR`` (default ``$SGLANG_CACHE_DIR/inductor``):
  ``fxgraph/<k[1:3]>/<k>/<entry>``, ``aotautograd/<k[1:3]>/<k>/entry``,
  ``<h[1:3]>/c<h>.py`` (+ ``.best_config`` in max-autotune modes).
  - Every run (facts §10: ``@torch.compile`` helpers such as the sampler and
    rotary run without ``--enable-torch-compile``): 2 helper graphs.  Set
    ``FAKE_SGLANG_NO_HELPER_COMPILE=1`` to suppress them.
  - ``--enable-torch-compile`` AND decode CUDA graph on: one model graph per
    captured decode batch size <= ``--torch-compile-max-bs`` (default 32).
    With the decode graph disabled (``--disable-cuda-graph`` etc.) nothing is
    compiled (§1).  ``compile_deep_gemm`` forces torch.compile off.
* FlashInfer, only for ``flashinfer`` attention (``--attention-backend``,
  ``--decode-attention-backend``, ``--prefill-attention-backend``):
  ``$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/0.7.2.post1/90a/`` (base
  default ``$SGLANG_CACHE_DIR``; version ``FAKE_FLASHINFER_VERSION``; arch
  ``FAKE_SGLANG_GPU_ARCH``):
  ``cached_ops/<module>/{build.ninja,*.cuda.o,<module>.so,.ninja_log,.ninja_deps}``,
  ``generated/<module>/*.cu``, ``cached_ops/tmp/<module>.lock`` and
  ``flashinfer_jit.log`` (created empty on every run, like the import does).
  Modules: ``batch_decode_with_kv_cache_dtype_q_bf16_dtype_kv_<kv>_dtype_o_bf16_dtype_idx_i32_head_dim_qk_<d>_head_dim_vo_<d>_posenc_0_use_swa_False_use_logits_cap_False``
  and ``batch_prefill_with_kv_cache_..._f16qk_False_kv_stride_equal`` (kv =
  bf16/f16/e4m3/e5m2 from the KV dtype).  ``build.ninja`` is a real ninja file
  with absolute paths in its own dir, compiled by ``fake_nvcc.py``; the fake
  runs ``ninja -C <dir>`` (``MAX_JOBS`` -> ``-j``) on every start like
  FlashInfer, so ``ninja -n -C <dir>`` says "no work to do" once built, sees
  work after the package headers (``FAKE_FLASHINFER_DATA_DIR``, default
  ``_fake/flashinfer_data``) are touched, and a copied cache still names its old
  dir.  Without ninja on PATH the outputs are written directly (no .ninja_log).
  The cold-build line ``<ts> - INFO - core.py:594 - flashinfer.jit: Building
  JIT module <name>; this can take several minutes on first use.`` goes to
  stderr and ``flashinfer_jit.log`` only when ``<module>.so`` is missing.
* DeepGEMM (``$SGLANG_DG_CACHE_DIR``, default ``$SGLANG_CACHE_DIR/deep_gemm``):
  ``cache/kernel.<type>.<hash>/{kernel.cu,kernel.cubin}`` and
  ``locks/<TYPE>_n{N}_k{K}_g{G}.lock``.  DeepGEMM runs when the GPU arch is
  >= 90, ``SGLANG_ENABLE_JIT_DEEPGEMM`` is not false, and either
  ``--fp8-gemm-backend deep_gemm``, ``--moe-runner-backend deep_gemm``, or the
  checkpoint's config.json has ``quantization_config.quant_method: fp8`` with a
  ``weight_block_size`` (block FP8; plain ``--quantization fp8`` is per-tensor
  and does not use DeepGEMM).  Per (kernel type, N, K, groups) it logs, like
  the real ``compile_utils`` on EVERY start (the sweep is not skipped when the
  cache is warm, §8/§12): WARNING ``Entering DeepGEMM JIT Pre-Compile
  session. ...`` (not inside compile_deep_gemm), ``Try DeepGEMM JIT Compiling
  for <TYPE> N=.., K=.., num_groups=.. with all Ms.``, ``Required memory for
  warmup: ...`` and a ``DeepGEMM warmup: 100%|...`` progress line.  Whether
  kernels were cold is visible only in the cache dir (and via
  ``SGLANG_CRASH_ON_JIT_COMPILE``).  ``SGLANG_JIT_DEEPGEMM_PRECOMPILE=0`` skips
  the sweep logs; ``SGLANG_JIT_DEEPGEMM_FAST_WARMUP`` shrinks the M count; a
  ``--chunked-prefill-size`` > 8192 adds a BLOCK_M=256 variant per shape.
* MoE configs (Triton fused-MoE runner: MoE model and
  ``--moe-runner-backend`` auto or triton): ``get_moe_configs`` of the fake
  ``fused_moe_triton_config`` module, the real lookup: ``Using MoE kernel config
  from <path>.`` / ``Config file not found at <p>. Fallback to triton version
  <v> and use MoE kernel config from <p2>. Performance might be sub-optimal!`` /
  ``Using default MoE kernel config. Performance might be sub-optimal! ...``;
  ``SGLANG_MOE_CONFIG_DIR`` without ``configs/`` -> FileNotFoundError -> the
  server exits 1.  Triton version ``FAKE_TRITON_VERSION`` (default 3.6.0 ->
  ``configs/triton_3_6_0/``), device name ``FAKE_SGLANG_GPU_NAME``.
  E = experts / ep_size, N = moe_intermediate_size / (tp_size / ep_size).
* ``SGLANG_CRASH_ON_JIT_COMPILE=1``: a cold FlashInfer module or DeepGEMM
  kernel makes the server log the scheduler traceback
  (``JitCompileForbidden: ...``) and exit 1, leaving that cache cold.  (The
  real variable covers sglang's own JIT kernels; which other caches it covers
  is unverified, §8 item 8.)  Not written by the fake:
  ``$SGLANG_JIT_CACHE_DIR`` / ``~/.cache/sglang/jit``.

compile_deep_gemm
=================
Plain ``argparse.ArgumentParser()`` (prog ``compile_deep_gemm.py``) with every
server flag plus ``--timeout`` (default 3600); ``--config`` is accepted and
ignored.  Sets ``SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE=1``,
``SGLANG_ENABLE_JIT_DEEPGEMM=1``, ``SGLANG_CHUNKED_PREFIX_CACHE_THRESHOLD=0``;
forces torch.compile off, both CUDA graphs disabled, ``--warmups
compile-deep-gemm``.  Prints ``Begin DeepGEMM Kernels compilation...``
(stdout), runs the same load (KV line, DeepGEMM kernels), binds the port, polls
``/v1/models``, sends one ``input_ids=[0,1,2,3]`` generate, sleeps
``FAKE_SGLANG_DG_FINAL_S`` (default 0.1; the real one sleeps 10 s), prints
``DeepGEMM Kernels compilation finished successfully.`` and exits 0.  Not up
within ``--timeout`` -> ``TimeoutError: DeepGEMM Kernels compilation
timeout.`` traceback, exit 1.  Same failure injection as the server.

Environment knobs of the fake
=============================
``FAKE_SGLANG_FAIL`` (comma-separated):
  ``exit_early``         scheduler traceback during load, exit 1 (port never opens)
  ``hang_before_ready``  finishes loading, never binds the port (SIGTERM still works)
  ``oom``                ``RuntimeError: Not enough memory. Please try to increase
                         --mem-fraction-static. Current value: mem_fraction_static=X``, exit 1
                         (X = the flag, or the auto value; a fraction too small for the
                         weights fails the same way without this knob)
  ``wrong_kv_dtype``     logs (and uses) another KV dtype than asked
                         (fp8 asked -> torch.bfloat16; bf16/auto -> torch.float8_e4m3fn)
  ``ignore_sigterm``     parent and child ignore SIGTERM/SIGINT; only SIGKILL works
  ``generate_500``       POST /generate returns 500 once the server is up
                         (the built-in warmup still succeeds)
  ``warmup_fail``        the warmup /generate returns 500 -> ``Initialization failed.
                         warmup error`` -> the whole tree is SIGKILLed (rc -9)
``FAKE_SGLANG_LOAD_S``    seconds of "weight loading" before anything listens (0.2)
``FAKE_SGLANG_WARMUP_S``  seconds between the port opening and the warmup request (0.1)
``FAKE_SGLANG_GENERATE_S`` extra latency per /generate request (0)
``FAKE_SGLANG_JIT_COLD_S`` extra sleep per cold FlashInfer module / DeepGEMM shape (0)
``FAKE_SGLANG_DG_FINAL_S`` compile_deep_gemm's final sleep (0.1)
``FAKE_SGLANG_LAUNCH_LOG`` append ``{"module","argv","pid","ppid","pgid","cwd","time",
                          "env" (caller's SGLANG_*/FLASHINFER_*/TORCHINDUCTOR_*/TRITON_*/
                          CUDA_*/DG_*/FAKE_*/TILELANG_*/TVM_FFI_*/HOME/MAX_JOBS/PYTHONPATH,
                          before the redirect), "cache_dirs"}`` per launch (before parsing)
``FAKE_SGLANG_ORPHAN_CHILD=1`` the child survives a SIGKILL of the parent alone
``FAKE_SGLANG_NO_HELPER_COMPILE=1`` no always-on inductor helper graphs
``FAKE_SGLANG_VERSION``   ``sglang.__version__`` (0.5.23)
``FAKE_SGLANG_GPU_NAME`` / ``FAKE_SGLANG_GPU_ARCH`` / ``FAKE_SGLANG_GPU_MEM_GB``
                          fake device (NVIDIA H100 80GB HBM3 / 90a / 79.19)
``FAKE_TRITON_VERSION``   triton version for MoE config dirs and triton keys (3.6.0)
``FAKE_FLASHINFER_VERSION`` FlashInfer version dir (0.7.2.post1)
``FAKE_FLASHINFER_DATA_DIR`` stand-in for the installed FlashInfer package data

Real variables honoured: ``SGLANG_CACHE_DIR``, ``TRITON_CACHE_DIR``,
``TORCHINDUCTOR_CACHE_DIR``, ``CUDA_CACHE_PATH``, ``TILELANG_CACHE_DIR``,
``FLASHINFER_WORKSPACE_BASE``, ``SGLANG_DG_CACHE_DIR``, ``SGLANG_MOE_CONFIG_DIR``,
``SGLANG_CRASH_ON_JIT_COMPILE``, ``SGLANG_ENABLE_JIT_DEEPGEMM``,
``SGLANG_JIT_DEEPGEMM_PRECOMPILE``, ``SGLANG_JIT_DEEPGEMM_FAST_WARMUP``,
``SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE``, ``SGLANG_TORCH_COMPILE_MODE``,
``SGLANG_WARMUP_TIMEOUT``, ``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION``,
``FLASHINFER_JIT_VERBOSE``, ``MAX_JOBS``.  ``DG_JIT_CACHE_DIR`` and
``FLASHINFER_CUDA_ARCH_LIST`` are ignored (sglang overwrites both, §3.2).

Approximations (not in the facts, chosen by the fake): the exact text of the
launch_server UserWarning and of the deprecation warnings, the prefill graph
"end" line, memory/token numbers, generated text, Triton/Inductor/DeepGEMM
file contents and DeepGEMM's in-directory layout, the timing of the MoE lookup
(during load, not at the first MoE forward).
"""
