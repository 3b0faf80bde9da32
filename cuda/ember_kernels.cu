// The one translation unit build.rs compiles into the embedded fatbin (and, without nvcc, the
// source NVRTC compiles at run time): every op family of cuda/, in one module.
#include "activation.cu"
#include "decode_attention.cu"
#include "dequant.cu"
#include "gather.cu"
#include "kv_cache.cu"
#include "lora.cu"
#include "norm.cu"
#include "prefill_attention.cu"
#include "rope.cu"
#include "sampling.cu"
