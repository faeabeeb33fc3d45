// Entry point of the layerfs native addon: the FUSE session (session.c), the C data path of
// open files (handles.c) and syscalls Node lacks (sys.c).
#include "common.h"
#include <errno.h>
#include <string.h>

void export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
}

int64_t arg_i64(napi_env env, napi_value v) {
  int64_t r = 0;
  if (napi_get_value_int64(env, v, &r) != napi_ok) return 0;
  return r;
}

double arg_f64(napi_env env, napi_value v) {
  double r = 0;
  if (napi_get_value_double(env, v, &r) != napi_ok) return 0;
  return r;
}

ssize_t arg_str(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return -1;
  if (len >= size - 1) {
    size_t full = 0;
    napi_get_value_string_utf8(env, v, NULL, 0, &full);
    if (full >= size) return -1;
  }
  return (ssize_t)len;
}

napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  session_init_exports(env, exports);
  thin_init_exports(env, exports);
  sys_init_exports(env, exports);
  service_init_exports(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
