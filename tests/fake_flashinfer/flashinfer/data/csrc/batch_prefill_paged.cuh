// Fake FlashInfer csrc file batch_prefill_paged.cuh (copied into generated/<module>/ by the fake gen_* functions).
#pragma once
