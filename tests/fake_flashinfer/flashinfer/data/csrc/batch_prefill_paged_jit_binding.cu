// Fake FlashInfer csrc file batch_prefill_paged_jit_binding.cu (copied into generated/<module>/ by the fake gen_* functions).
#include "batch_prefill_config.inc"
