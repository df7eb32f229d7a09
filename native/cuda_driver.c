/* Resolves the CUDA driver API from libcuda.so.1 at run time (see cuda_driver.h). */
#include "cuda_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static hs_cuda_api api;
static const char *failure = NULL;
static char failure_text[256];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(failure_text, sizeof failure_text, "the CUDA driver (libcuda.so.1) could not be loaded: %s",
                 dlerror());
        failure = failure_text;
        return;
    }
#define HS_LOAD(field, symbol)                                                                               \
    do {                                                                                                     \
        *(void **)&api.field = dlsym(lib, symbol);                                                           \
        if (api.field == NULL) {                                                                             \
            snprintf(failure_text, sizeof failure_text, "libcuda.so.1 has no %s: a driver too old", symbol); \
            failure = failure_text;                                                                          \
            return;                                                                                          \
        }                                                                                                    \
    } while (0)
    HS_LOAD(Init, "cuInit");
    HS_LOAD(GetErrorString, "cuGetErrorString");
    HS_LOAD(DeviceGet, "cuDeviceGet");
    HS_LOAD(DeviceGetAttribute, "cuDeviceGetAttribute");
    HS_LOAD(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    HS_LOAD(CtxGetCurrent, "cuCtxGetCurrent");
    HS_LOAD(CtxSetCurrent, "cuCtxSetCurrent");
    HS_LOAD(CtxGetDevice, "cuCtxGetDevice");
    HS_LOAD(ModuleLoadData, "cuModuleLoadData");
    HS_LOAD(ModuleGetFunction, "cuModuleGetFunction");
    HS_LOAD(FuncSetAttribute, "cuFuncSetAttribute");
    HS_LOAD(LaunchKernel, "cuLaunchKernel");
    HS_LOAD(MemAlloc, "cuMemAlloc_v2");
    HS_LOAD(MemFree, "cuMemFree_v2");
    HS_LOAD(MemcpyHtoD, "cuMemcpyHtoD_v2");
    HS_LOAD(MemcpyDtoH, "cuMemcpyDtoH_v2");
    HS_LOAD(MemsetD8, "cuMemsetD8_v2");
    HS_LOAD(EventCreate, "cuEventCreate");
    HS_LOAD(EventRecord, "cuEventRecord");
    HS_LOAD(EventSynchronize, "cuEventSynchronize");
    *(void **)&api.EventElapsedTime = dlsym(lib, "cuEventElapsedTime_v2");  /* CUDA ≥ 12.8; older: the plain name */
    if (api.EventElapsedTime == NULL) HS_LOAD(EventElapsedTime, "cuEventElapsedTime");
    HS_LOAD(CtxSynchronize, "cuCtxSynchronize");
#undef HS_LOAD
    CUresult rc = api.Init(0);
    if (rc != 0) {
        snprintf(failure_text, sizeof failure_text, "cuInit failed with CUDA error %d (no usable GPU?)", rc);
        failure = failure_text;
    }
}

const hs_cuda_api *hs_cuda(const char **why) {
    pthread_once(&once, load);
    if (failure != NULL) {
        if (why != NULL) *why = failure;
        return NULL;
    }
    return &api;
}
