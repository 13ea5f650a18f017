// Fake FlashInfer csrc file batch_prefill_fp8_sm90.cu (copied into generated/<module>/ by the fake gen_* functions).
#include <flashinfer/attention/hopper/prefill_sm90.cuh>
#include "batch_prefill_sm90_config.inc"
