// Fake FlashInfer csrc file batch_decode_jit_binding.cu (copied into generated/<module>/ by the fake gen_* functions).
#include "batch_decode_config.inc"
