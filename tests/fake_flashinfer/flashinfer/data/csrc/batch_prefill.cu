// Fake FlashInfer csrc file batch_prefill.cu (copied into generated/<module>/ by the fake gen_* functions).
#include <flashinfer/attention/prefill.cuh>
#include "batch_prefill_config.inc"
#include "batch_prefill_paged.cuh"
