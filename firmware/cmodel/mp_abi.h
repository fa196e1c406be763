// MicroPython's ABI as cmodel.c uses it: the object and function layouts of a native module,
// the function table (mp_glue.h, generated), and the argument checks its functions share.
// Included once, by cmodel.c (one translation unit: everything static).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Layouts from py/obj.h, py/bc.h, py/nativeglue.h (identical in v1.25 and the VM's v1.29).
typedef void *obj_t;
typedef struct { void *buf; size_t len; int typecode; } buffer_t;  // mp_buffer_info_t
typedef obj_t (*fun_var_t)(size_t n_args, const obj_t *args);
typedef struct { const void *type; uint32_t sig; fun_var_t fun; } fun_builtin_var_t;
typedef struct { const void *type; void *globals; const uint16_t *qstr_table; obj_t *obj_table; } module_context_t;
typedef struct { const void *type; const module_context_t *context; } fun_bc_t;

// The function-table entries cmodel.c uses as mp->name, typed; mp_glue.h (generated) puts each at its index.
typedef obj_t mp_const_none_t;
typedef void *(*mp_swap_globals_t)(void *globals);
typedef obj_t (*mp_load_global_t)(size_t qst);
typedef void (*mp_store_global_t)(size_t qst, obj_t value);
typedef void *(*mp_realloc__t)(void *ptr, size_t n, bool allow_move);
typedef __attribute__((noreturn)) void (*mp_raise_msg_t)(const void *exc_type, const char *msg);
typedef obj_t (*mp_obj_new_float_from_f_t)(float f);
typedef float (*mp_obj_get_float_to_f_t)(obj_t o);
typedef bool (*mp_get_buffer_t)(obj_t o, buffer_t *info, unsigned flags);
typedef const void *mp_type_fun_builtin_var_t;
#include "mp_glue.h"

static const mp_fun_table_t *mp;
static const uint16_t *qstrs;  // the .mpy's qstr table, interned by the loader
#define QSTR(name) (qstrs[Q_##name])

#define BUFFER_READ 1
#define BUFFER_RW 3
#define SMALL_INT(o) ((intptr_t)(o) >> 1)
#define IS_SMALL_INT(o) (((intptr_t)(o) & 1) != 0)
#define SMALL_INT_OBJ(n) ((obj_t)(((intptr_t)(n) << 1) | 1))
#define FUN_SIG(n) (((uint32_t)(n) << 17) | ((uint32_t)(n) << 1))  // n positional arguments, no keywords

static _Noreturn void value_error(const char *msg) {
    mp->raise_msg(mp->load_global(QSTR(ValueError)), msg);
}

NOINLINE float *floats_len(obj_t o, size_t n, size_t *len, const char *msg) {
    // The float32 array behind o, which must hold at least n floats; *len its length.
    buffer_t b;
    if (!mp->get_buffer(o, &b, BUFFER_RW) || b.typecode != 'f' || b.len < n * sizeof(float)) value_error(msg);
    *len = b.len / sizeof(float);
    return b.buf;
}

static float *floats(obj_t o, size_t n, const char *msg) {
    size_t len;
    return floats_len(o, n, &len, msg);
}

static int small_int(obj_t o, int lo, int hi, const char *msg) {
    if (!IS_SMALL_INT(o) || SMALL_INT(o) < lo || SMALL_INT(o) > hi) value_error(msg);
    return (int)SMALL_INT(o);
}

NOINLINE void define(size_t name, fun_var_t fun, int n_args) {
    fun_builtin_var_t *f = mp->realloc_(NULL, sizeof(fun_builtin_var_t), false);
    f->type = mp->type_fun_builtin_var;
    f->sig = FUN_SIG(n_args);
    f->fun = fun;
    mp->store_global(name, f);
}
