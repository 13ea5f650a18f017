"""Fake of ``sglang/srt/layers/moe/moe_runner/triton_utils/fused_moe_triton_config.py``.

``get_config_file_name`` and ``get_moe_configs`` follow the real code (facts
§7): same file-name format (``block_shape=[128, 128]`` printed as a Python list,
with a space), same lookup order, same log lines, and the same
``FileNotFoundError`` from ``os.listdir(<dir>/configs)`` when
``SGLANG_MOE_CONFIG_DIR`` has no ``configs/`` and the exact file is missing.

Differences: the device name comes from ``FAKE_SGLANG_GPU_NAME`` (default
``NVIDIA H100 80GB HBM3``) and ``triton.__version__`` from
``FAKE_TRITON_VERSION`` (default ``3.6.0``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Dict, List, Optional

from sglang.srt.runtime_context import get_server_args
from sglang.srt.utils import get_device_name

logger = logging.getLogger(__name__)


def triton_version() -> str:
    return os.environ.get("FAKE_TRITON_VERSION") or "3.6.0"


def get_config_file_name(
    E: int,
    N: int,
    dtype: Optional[str],
    block_shape: Optional[List[int]] = None,
    per_channel_quant: bool = False,
    down_moe: bool = False,
) -> str:
    device_name = get_device_name().replace(" ", "_")
    dtype_selector = "" if not dtype else f",dtype={dtype}"
    block_shape_selector = (
        "" if not block_shape or not all(block_shape) else f",block_shape={list(block_shape)}"
    )
    per_channel_quant_selector = ",per_channel_quant=True" if per_channel_quant else ""
    down_moe_selector = "_down" if down_moe else ""
    return (
        f"E={E},N={N},device_name={device_name}{dtype_selector}"
        f"{block_shape_selector}{per_channel_quant_selector}{down_moe_selector}.json"
    )


@functools.lru_cache
def get_moe_configs(
    E: int,
    N: int,
    dtype: Optional[str],
    block_n: Optional[int] = 0,
    block_k: Optional[int] = 0,
    per_channel_quant: bool = False,
    down_moe: bool = False,
) -> Optional[Dict[int, Any]]:
    if get_server_args().enable_deterministic_inference:
        logger.warning("Deterministic inference is enabled, using default MoE kernel config.")
        return None

    json_file_name = get_config_file_name(
        E, N, dtype, [block_n, block_k], per_channel_quant, down_moe=down_moe
    )
    config_dir = os.environ.get(
        "SGLANG_MOE_CONFIG_DIR", os.path.dirname(os.path.realpath(__file__))
    )
    version = triton_version()
    version_dir = f"triton_{version.replace('.', '_')}"
    config_file_path = os.path.join(config_dir, "configs", version_dir, json_file_name)
    if os.path.exists(config_file_path):
        with open(config_file_path) as f:
            logger.info(f"Using MoE kernel config from {config_file_path}.")
            return {int(key): val for key, val in json.load(f).items()}

    configs_root = os.path.join(config_dir, "configs")
    available_versions = sorted(
        (
            d[len("triton_"):].replace("_", ".")
            for d in os.listdir(configs_root)  # FileNotFoundError like the real code
            if d.startswith("triton_")
        ),
        key=lambda v: tuple(int(x) for x in v.split(".")),
        reverse=True,
    )
    for try_triton_version in available_versions:
        if try_triton_version == version:
            continue
        try_config_file_path = os.path.join(
            configs_root, f"triton_{try_triton_version.replace('.', '_')}", json_file_name
        )
        if os.path.exists(try_config_file_path):
            with open(try_config_file_path) as f:
                logger.warning(
                    f"Config file not found at {config_file_path}. Fallback to triton version "
                    f"{try_triton_version} and use MoE kernel config from {try_config_file_path}. "
                    "Performance might be sub-optimal!",
                )
                return {int(key): val for key, val in json.load(f).items()}

    logger.warning(
        (
            "Using default MoE kernel config. Performance might be sub-optimal! "
            "Config file not found at %s, you can create them with "
            "https://github.com/sgl-project/sglang/tree/main/benchmark/kernels/fused_moe_triton"
        ),
        config_file_path,
    )
    return None
