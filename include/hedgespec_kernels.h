/*
 * hedgespec_kernels: the selection step of hedgespec-fast as a C library.
 *
 * The Triton kernels of hedgespec_fast.kernels, compiled ahead of time for chosen GPU architectures (sm_80, sm_90
 * by default), behind a plain C API: device pointers, sizes, strides and a CUDA stream in; a status code out, with
 * a message for anything wrong (hs_last_error). The CUDA driver (libcuda.so.1) is loaded at run time, so the library
 * links without a CUDA toolkit and fails cleanly (HS_NO_DRIVER) on a machine without one.
 *
 *   hs_acceptance_probs   γ[i, j] = Σ_v min(p_j(v), q_ij(v)) (tv), 1{argmax q = argmax p} (greedy) or the top-L mass
 *                         (topl) of N drafters at m positions, from raw logits (fp32 / fp16 / bf16), one launch.
 *   hs_hedge_update_from_gamma
 *                         losses of a γ window → T learner rounds (Hedge / NormalHedge / AdaNormalHedge) → the next
 *                         choice, one launch, state updated in place.
 *
 * Python (hedgespec_fast.kernels) is the reference: tests compare the two on a GPU.
 */
#ifndef HEDGESPEC_KERNELS_H
#define HEDGESPEC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(HS_BUILDING) && defined(__GNUC__)
#define HS_API __attribute__((visibility("default")))
#else
#define HS_API
#endif

typedef enum {
    HS_OK = 0,
    HS_INVALID_ARGUMENT = 1, /* a null pointer, a size out of range, a bad stride */
    HS_UNSUPPORTED = 2,      /* a dtype, mode, learner or architecture this build has no kernel for */
    HS_NO_DRIVER = 3,        /* libcuda.so.1 could not be loaded, or has no usable device */
    HS_CUDA_ERROR = 4        /* the driver refused a call (the message says which, with its error string) */
} hs_status;

typedef enum { HS_FP32 = 0, HS_FP16 = 1, HS_BF16 = 2 } hs_dtype;
typedef enum { HS_MODE_TV = 0, HS_MODE_GREEDY = 1, HS_MODE_TOPL = 2 } hs_mode;
typedef enum { HS_HEDGE = 0, HS_NORMALHEDGE = 1, HS_ADANORMALHEDGE = 2 } hs_algo;
typedef enum { HS_LOSS_ACCEPTANCE = 1, HS_LOSS_EXPECTED_LENGTH = 2 } hs_loss;

/* The message of the last call that did not return HS_OK on this thread ("" if none). */
HS_API const char *hs_last_error(void);

/* "hedgespec_kernels <version> (sm_80, sm_90; N specialisations)". */
HS_API const char *hs_build_info(void);

/* Largest vocabulary / drafters / positions the compiled specialisations accept. */
#define HS_MAX_VOCAB 262144
#define HS_MAX_DRAFTERS 256
#define HS_MAX_POSITIONS 4096

/* Bytes of device workspace hs_acceptance_probs needs for this shape (0 with *status set on bad sizes). The
 * workspace must be zero-filled once when allocated (the kernels leave their counters at zero) and must not be used
 * by two launches at the same time. */
HS_API size_t hs_acceptance_workspace_bytes(int n_drafters, int m, int vocab, hs_mode mode, int top_l, hs_status *status);

/*
 * γ of n_drafters drafters at m positions.
 *   target_logits   [m, vocab] with row stride stride_target (elements), unit stride along the vocabulary
 *   drafter_logits  [n_drafters, m, vocab], strides stride_drafter_n, stride_drafter_m (elements)
 *   dtype           of both logits tensors
 *   temperature     > 0 for tv / topl (logits / T); ignored by greedy
 *   top_l           1..8 for HS_MODE_TOPL (this build: 2, 4 or 8); ignored otherwise
 *   gamma_out       [n_drafters, m] fp32, contiguous
 *   stream          a CUstream (NULL: the default stream)
 */
HS_API hs_status hs_acceptance_probs(const void *target_logits, const void *drafter_logits, hs_dtype dtype, int n_drafters,
                              int m, int vocab, int64_t stride_target, int64_t stride_drafter_n,
                              int64_t stride_drafter_m, float temperature, hs_mode mode, int top_l, float *gamma_out,
                              void *workspace, size_t workspace_bytes, void *stream);

/*
 * Learner rounds from a γ window [n_drafters, width] (fp32, strides stride_gn, stride_gs): the expected-length loss
 * releases width - draft_len + 1 rounds, the acceptance loss width rounds; then the next choice.
 *   regret, abs_regret, cum_loss, weights   [n_drafters] fp32 device state, updated in place
 *   step            [1] int64 device counter of rounds seen
 *   u               [1] fp32 device uniform in [0, 1) to sample the choice (NULL: argmax)
 *   choice_out      [1] int64 device: the drafter to play next
 */
HS_API hs_status hs_hedge_update_from_gamma(const float *gamma, int n_drafters, int width, int64_t stride_gn,
                                     int64_t stride_gs, int draft_len, hs_loss loss, hs_algo algo, float *regret,
                                     float *abs_regret, float *cum_loss, float *weights, int64_t *step,
                                     const float *u, int64_t *choice_out, void *stream);

#ifdef __cplusplus
}
#endif
#endif
