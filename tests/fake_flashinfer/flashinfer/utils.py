"""flashinfer/utils.py (0.7.2) subset: attention backend selection (utils.py:456-629)."""
import torch


def version_at_least(version, base_version):
    def parts(v):
        out = []
        for p in str(v).split("+")[0].split("."):
            digits = "".join(ch for ch in p if ch.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return parts(version) >= parts(base_version)


def get_compute_capability(device):
    return torch.cuda.get_device_capability(device)


def is_sm90a_supported(device):
    major, _ = get_compute_capability(device)
    return major == 9 and version_at_least(torch.version.cuda, "12.3")


def is_fa3_backend_supported(pos_encoding_mode, use_fp16_qk_reductions, use_custom_mask,
                             dtype_q, dtype_kv):
    if use_custom_mask:
        return False
    if pos_encoding_mode != 0:
        return False
    if use_fp16_qk_reductions:
        return False
    fp8 = {torch.float8_e4m3fn, torch.float8_e5m2}
    if dtype_kv in fp8 and dtype_q not in fp8:
        return False
    if dtype_kv == torch.uint8:
        return False
    return True


def is_fa3_prefill_head_dim_supported(head_dim_qk, head_dim_vo):
    if head_dim_qk == head_dim_vo:
        return head_dim_qk in {64, 128, 256}
    return (head_dim_qk, head_dim_vo) == (192, 128)


def determine_attention_backend(device, pos_encoding_mode, use_fp16_qk_reductions,
                                use_custom_mask, dtype_q, dtype_kv, *,
                                head_dim_qk=None, head_dim_vo=None):
    if is_sm90a_supported(device) and is_fa3_backend_supported(
        pos_encoding_mode, use_fp16_qk_reductions, use_custom_mask, dtype_q, dtype_kv
    ):
        if head_dim_qk is None or head_dim_vo is None:
            return "fa3"
        if is_fa3_prefill_head_dim_supported(head_dim_qk, head_dim_vo):
            return "fa3"
    else:
        return "fa2"
    return "fa2"
