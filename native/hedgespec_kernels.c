/* hedgespec_kernels: the C API over the AOT-compiled Triton kernels (see include/hedgespec_kernels.h).
 *
 * Every entry point validates its arguments the way the Python launchers do (kernels/acceptance.py, hedge.py) and
 * returns a status with a message before anything reaches the GPU; then it picks the specialisation for the current
 * device's architecture, loads its cubin once per CUDA context, and launches it on the given stream. The argument
 * order of each launch is the kernel's own (its arg_names without the constexprs), then Triton's two scratch
 * pointers. */
#include "hedgespec_kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cuda_driver.h"
#include "hs_variants.h"

#define HS_VERSION "0.2.0"
#define HS_BLOCK_V 2048
#define HS_LOG2E 1.4426950408889634f

static _Thread_local char error_text[512];

const char *hs_last_error(void) { return error_text; }

static hs_status fail(hs_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(error_text, sizeof error_text, format, args);
    va_end(args);
    return status;
}

static hs_status ok(void) {
    error_text[0] = '\0';
    return HS_OK;
}

const char *hs_build_info(void) {
    static char text[160];
    int archs[8], n_archs = 0;
    for (int i = 0; i < hs_variant_count; i++) {
        int seen = 0;
        for (int j = 0; j < n_archs; j++) seen |= archs[j] == hs_variants[i].arch;
        if (!seen && n_archs < 8) archs[n_archs++] = hs_variants[i].arch;
    }
    int used = snprintf(text, sizeof text, "hedgespec_kernels " HS_VERSION " (");
    for (int j = 0; j < n_archs; j++) used += snprintf(text + used, sizeof text - used, "%ssm_%d", j ? ", " : "",
                                                     archs[j]);
    snprintf(text + used, sizeof text - used, "; %d specialisations)", hs_variant_count);
    return text;
}

/* -- loading ------------------------------------------------------------------------------------------------ */
#define HS_MAX_CONTEXTS 8
typedef struct {
    CUcontext context;
    CUfunction functions[512];
} loaded_context;
static loaded_context contexts[HS_MAX_CONTEXTS];
static pthread_mutex_t loading = PTHREAD_MUTEX_INITIALIZER;

static hs_status cuda_fail(const hs_cuda_api *cu, CUresult rc, const char *what) {
    const char *text = NULL;
    if (cu->GetErrorString(rc, &text) != 0 || text == NULL) text = "unknown error";
    return fail(HS_CUDA_ERROR, "%s failed: CUDA error %d (%s)", what, rc, text);
}

/* The current context's device architecture (compute capability × 10). */
static hs_status current_arch(const hs_cuda_api *cu, CUcontext *context, int *arch) {
    CUresult rc = cu->CtxGetCurrent(context);
    if (rc != 0) return cuda_fail(cu, rc, "cuCtxGetCurrent");
    if (*context == NULL) {  /* no context yet: the primary context of device 0, as the runtime API would */
        CUdevice device;
        if ((rc = cu->DeviceGet(&device, 0)) != 0) return cuda_fail(cu, rc, "cuDeviceGet");
        if ((rc = cu->DevicePrimaryCtxRetain(context, device)) != 0) return cuda_fail(cu, rc, "cuDevicePrimaryCtxRetain");
        if ((rc = cu->CtxSetCurrent(*context)) != 0) return cuda_fail(cu, rc, "cuCtxSetCurrent");
    }
    CUdevice device;
    int major = 0, minor = 0;
    if ((rc = cu->CtxGetDevice(&device)) != 0) return cuda_fail(cu, rc, "cuCtxGetDevice");
    cu->DeviceGetAttribute(&major, HS_CU_ATTR_CC_MAJOR, device);
    cu->DeviceGetAttribute(&minor, HS_CU_ATTR_CC_MINOR, device);
    *arch = 10 * major + minor;
    return HS_OK;
}

/* A cubin runs on its own major architecture at an equal or later minor: sm_80 code on sm_86 / sm_89. */
static int runs_on(int variant_arch, int device_arch) {
    return variant_arch / 10 == device_arch / 10 && variant_arch <= device_arch;
}

/* The driver, the current context and its compute capability (HS_NO_DRIVER / the driver's error otherwise). */
static hs_status current_device(const hs_cuda_api **cu, CUcontext *context, int *arch) {
    const char *why = NULL;
    *cu = hs_cuda(&why);
    if (*cu == NULL) return fail(HS_NO_DRIVER, "%s", why);
    return current_arch(*cu, context, arch);
}

static hs_status function_for(int index, CUfunction *function) {
    const hs_cuda_api *cu;
    CUcontext context;
    int arch;
    hs_status status = current_device(&cu, &context, &arch);
    if (status != HS_OK) return status;
    pthread_mutex_lock(&loading);
    loaded_context *slot = NULL;
    for (int i = 0; i < HS_MAX_CONTEXTS && slot == NULL; i++)
        if (contexts[i].context == context || contexts[i].context == NULL) slot = &contexts[i];
    if (slot == NULL) {
        pthread_mutex_unlock(&loading);
        return fail(HS_UNSUPPORTED, "more than %d CUDA contexts used this library", HS_MAX_CONTEXTS);
    }
    slot->context = context;
    if (slot->functions[index] == NULL) {
        const hs_variant *v = &hs_variants[index];
        CUmodule module;
        CUresult rc = cu->ModuleLoadData(&module, v->cubin);
        if (rc == 0) rc = cu->ModuleGetFunction(&slot->functions[index], module, v->name);
        if (rc == 0 && v->shared > 49152)
            rc = cu->FuncSetAttribute(slot->functions[index], HS_CU_FUNC_MAX_DYNAMIC_SHARED, v->shared);
        if (rc != 0) {
            slot->functions[index] = NULL;
            pthread_mutex_unlock(&loading);
            return cuda_fail(cu, rc, "loading a kernel's cubin");
        }
    }
    *function = slot->functions[index];
    pthread_mutex_unlock(&loading);
    return HS_OK;
}

/* The specialisation for (kind, fields) on the current device; HS_UNSUPPORTED naming what is missing. */
static hs_status find_variant(int kind, int dtype, int mode, int top_l, int algo, int loss, int sample, int n,
                              int *index) {
    const hs_cuda_api *cu;
    CUcontext context;
    int arch;
    hs_status status = current_device(&cu, &context, &arch);
    if (status != HS_OK) return status;
    int best = -1, archs_here = 0;
    for (int i = 0; i < hs_variant_count; i++) {
        const hs_variant *v = &hs_variants[i];
        if (v->kind != kind || !runs_on(v->arch, arch)) continue;
        archs_here = 1;
        if (kind == 0 && (v->dtype != dtype || v->mode != mode || (mode == HS_MODE_TOPL && v->top_l != top_l)))
            continue;
        if (kind == 1 && (v->algo != algo || v->loss != loss || v->sample != sample || v->block_n < n)) continue;
        if (best < 0 || (kind == 1 && v->block_n < hs_variants[best].block_n)) best = i;  /* narrowest that fits */
    }
    if (!archs_here) return fail(HS_UNSUPPORTED, "no kernel for sm_%d in this build (%s): rebuild with "
                                 "-DHS_ARCHS including %d", arch, hs_build_info(), arch);
    if (best < 0) return fail(HS_UNSUPPORTED, "no specialisation for this combination in %s", hs_build_info());
    *index = best;
    return HS_OK;
}

static hs_status launch(int index, unsigned grid, void **params, void *stream) {
    CUfunction function;
    hs_status status = function_for(index, &function);
    if (status != HS_OK) return status;
    const hs_cuda_api *cu = hs_cuda(NULL);
    const hs_variant *v = &hs_variants[index];
    CUresult rc = cu->LaunchKernel(function, grid, 1, 1, 32 * v->num_warps, 1, 1, v->shared, (CUstream)stream,
                                   params, NULL);
    return rc == 0 ? ok() : cuda_fail(cu, rc, "cuLaunchKernel");
}

/* -- γ ------------------------------------------------------------------------------------------------------- */
static int top_of(hs_mode mode, int top_l) { return mode == HS_MODE_TOPL ? top_l : 0; }

static size_t semaphore_words(int m) { return (size_t)(2 + 2 * (m > 64 ? m : 64) + 3) / 4 * 4; }

size_t hs_acceptance_workspace_bytes(int n_drafters, int m, int vocab, hs_mode mode, int top_l, hs_status *status) {
    hs_status s = HS_OK;
    if (n_drafters < 1 || n_drafters > HS_MAX_DRAFTERS || m < 1 || m > HS_MAX_POSITIONS || vocab < 1 ||
        vocab > HS_MAX_VOCAB)
        s = fail(HS_INVALID_ARGUMENT, "sizes out of range: n_drafters %d (1..%d), m %d (1..%d), vocab %d (1..%d)",
                 n_drafters, HS_MAX_DRAFTERS, m, HS_MAX_POSITIONS, vocab, HS_MAX_VOCAB);
    if (status != NULL) *status = s;
    if (s != HS_OK) return 0;
    size_t chunks = (size_t)(vocab + HS_BLOCK_V - 1) / HS_BLOCK_V, top = (size_t)top_of(mode, top_l);
    size_t slots = (size_t)(n_drafters + 1) * m * chunks, per = (size_t)n_drafters * m * chunks;
    size_t words = 3 * slots + per * (1 + top) + slots + per * top;  /* fp32 part, then int32 part */
    return 4 * (semaphore_words(m) + words);
}

hs_status hs_acceptance_probs(const void *target_logits, const void *drafter_logits, hs_dtype dtype, int n_drafters,
                              int m, int vocab, int64_t stride_target, int64_t stride_drafter_n,
                              int64_t stride_drafter_m, float temperature, hs_mode mode, int top_l, float *gamma_out,
                              void *workspace, size_t workspace_bytes, void *stream) {
    if (target_logits == NULL || drafter_logits == NULL || gamma_out == NULL || workspace == NULL)
        return fail(HS_INVALID_ARGUMENT, "null pointer: target_logits, drafter_logits, gamma_out and workspace are "
                    "required");
    if (dtype != HS_FP32 && dtype != HS_FP16 && dtype != HS_BF16)
        return fail(HS_UNSUPPORTED, "unsupported logits dtype %d: HS_FP32, HS_FP16 or HS_BF16", (int)dtype);
    if (mode != HS_MODE_TV && mode != HS_MODE_GREEDY && mode != HS_MODE_TOPL)
        return fail(HS_UNSUPPORTED, "unsupported mode %d: HS_MODE_TV, HS_MODE_GREEDY or HS_MODE_TOPL", (int)mode);
    if (mode == HS_MODE_TOPL && (top_l < 1 || top_l > 8))
        return fail(HS_INVALID_ARGUMENT, "top_l must be in [1, 8], got %d", top_l);
    if (mode != HS_MODE_GREEDY && !(temperature > 0.0f && isfinite(temperature)))
        return fail(HS_INVALID_ARGUMENT, "temperature must be > 0 for tv / topl, got %g", (double)temperature);
    hs_status status;
    size_t need = hs_acceptance_workspace_bytes(n_drafters, m, vocab, mode, top_l, &status);
    if (status != HS_OK) return status;
    if (workspace_bytes < need)
        return fail(HS_INVALID_ARGUMENT, "workspace of %zu bytes, this shape needs %zu "
                    "(hs_acceptance_workspace_bytes)", workspace_bytes, need);
    if (stride_target < vocab || stride_drafter_m < vocab || stride_drafter_n < (int64_t)m * stride_drafter_m ||
        (int64_t)n_drafters * stride_drafter_n > INT32_MAX || (int64_t)m * stride_target > INT32_MAX)
        return fail(HS_INVALID_ARGUMENT, "bad strides: rows must not overlap (stride_target %lld, stride_drafter_m "
                    "%lld ≥ vocab %d, stride_drafter_n %lld ≥ m · stride_drafter_m) and offsets must fit 32 bits",
                    (long long)stride_target, (long long)stride_drafter_m, vocab, (long long)stride_drafter_n);
    int index;
    if ((status = find_variant(0, dtype, mode, top_l, 0, 0, 0, 0, &index)) != HS_OK) return status;

    CUdeviceptr target = (CUdeviceptr)target_logits, drafters = (CUdeviceptr)drafter_logits;
    CUdeviceptr sem = (CUdeviceptr)workspace, ws = sem + 4 * semaphore_words(m), hist = (CUdeviceptr)gamma_out;
    CUdeviceptr scratch = 0;
    int chunks = (vocab + HS_BLOCK_V - 1) / HS_BLOCK_V, zero = 0, one = 1, stride_hn = m, stride_hs = 1;
    int st = (int)stride_target, sdn = (int)stride_drafter_n, sdm = (int)stride_drafter_m;
    float scale = mode == HS_MODE_GREEDY ? 1.0f : HS_LOG2E / temperature, fzero = 0.0f;
    /* the kernel's arguments in order; without a learner its pointers are the (unused) semaphore buffer */
    void *params[] = {&target, &drafters, &sem, &hist, &ws, &sem, &m, &n_drafters, &vocab, &chunks, &zero,
                      &st, &sdn, &sdm, &stride_hn, &stride_hs, &scale, &zero, &one,
                      &sem, &sem, &sem, &sem, &sem, &sem, &sem, &sem, &n_drafters, &fzero, &fzero, &fzero, &fzero,
                      &scratch, &scratch};
    unsigned tiles = (unsigned)m * (unsigned)chunks;
    return launch(index, mode == HS_MODE_TV ? 2 * tiles : tiles, params, stream);  /* tv: the fused 2-phase grid */
}

/* -- the learner update -------------------------------------------------------------------------------------- */
hs_status hs_hedge_update_from_gamma(const float *gamma, int n_drafters, int width, int64_t stride_gn,
                                     int64_t stride_gs, int draft_len, hs_loss loss, hs_algo algo, float *regret,
                                     float *abs_regret, float *cum_loss, float *weights, int64_t *step,
                                     const float *u, int64_t *choice_out, void *stream) {
    if (gamma == NULL || regret == NULL || abs_regret == NULL || cum_loss == NULL || weights == NULL || step == NULL ||
        choice_out == NULL)
        return fail(HS_INVALID_ARGUMENT, "null pointer: gamma, the learner state, step and choice_out are required");
    if (n_drafters < 1 || n_drafters > HS_MAX_DRAFTERS)
        return fail(HS_INVALID_ARGUMENT, "n_drafters must be in [1, %d], got %d", HS_MAX_DRAFTERS, n_drafters);
    if (width < 0 || width > HS_MAX_POSITIONS)
        return fail(HS_INVALID_ARGUMENT, "width must be in [0, %d], got %d", HS_MAX_POSITIONS, width);
    if (draft_len < 1) return fail(HS_INVALID_ARGUMENT, "draft_len must be >= 1, got %d", draft_len);
    if (loss != HS_LOSS_ACCEPTANCE && loss != HS_LOSS_EXPECTED_LENGTH)
        return fail(HS_UNSUPPORTED, "unsupported loss %d: HS_LOSS_ACCEPTANCE or HS_LOSS_EXPECTED_LENGTH", (int)loss);
    if (algo != HS_HEDGE && algo != HS_NORMALHEDGE && algo != HS_ADANORMALHEDGE)
        return fail(HS_UNSUPPORTED, "unsupported learner %d: HS_HEDGE, HS_NORMALHEDGE or HS_ADANORMALHEDGE",
                    (int)algo);
    if (stride_gn < 0 || stride_gs < 0 || (int64_t)n_drafters * stride_gn + (int64_t)width * stride_gs > INT32_MAX)
        return fail(HS_INVALID_ARGUMENT, "bad gamma strides %lld, %lld", (long long)stride_gn, (long long)stride_gs);
    int index;
    hs_status status = find_variant(1, 0, 0, 0, algo, loss, u != NULL, n_drafters, &index);
    if (status != HS_OK) return status;
    int rounds = loss == HS_LOSS_ACCEPTANCE ? width : (width - draft_len + 1 > 0 ? width - draft_len + 1 : 0);
    CUdeviceptr rows = (CUdeviceptr)weights, window = (CUdeviceptr)gamma, r = (CUdeviceptr)regret;
    CUdeviceptr c = (CUdeviceptr)abs_regret, l = (CUdeviceptr)cum_loss, w = (CUdeviceptr)weights;
    CUdeviceptr t = (CUdeviceptr)step, prior = w, uu = u != NULL ? (CUdeviceptr)u : w, choice = (CUdeviceptr)choice_out;
    CUdeviceptr scratch = 0;
    int zero = 0, one = 1, gn = (int)stride_gn, gs = (int)stride_gs;
    float inv_n = 1.0f / (float)n_drafters, eta = 0.0f;
    float rate = 8.0f * logf((float)(n_drafters > 2 ? n_drafters : 2)), bracket = logf(1.0f + logf((float)n_drafters));
    void *params[] = {&rows, &zero, &one, &window, &gn, &gs, &rounds, &draft_len, &r, &c, &l, &w, &t, &prior, &uu,
                      &choice, &n_drafters, &inv_n, &eta, &rate, &bracket, &scratch, &scratch};
    return launch(index, 1, params, stream);
}
