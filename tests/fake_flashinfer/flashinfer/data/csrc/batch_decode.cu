// Fake FlashInfer csrc file batch_decode.cu (copied into generated/<module>/ by the fake gen_* functions).
#include <flashinfer/attention/decode.cuh>
#include "batch_decode_config.inc"
