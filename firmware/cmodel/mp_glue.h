// Generated from microgpt/natmod.py's FUN_TABLE and cmodel.c by scripts/build_cmodel.py: do not edit.

// MicroPython's function table (mp_fun_table_t, py/nativeglue.h), every entry at its index. The
// entries cmodel.c uses as mp->name have the types it declares, mp_<name>_t.
typedef struct {
    mp_const_none_t           const_none;  // 0
    void *                    const_false;  // 1
    void *                    const_true;  // 2
    void *                    native_from_obj;  // 3
    void *                    native_to_obj;  // 4
    mp_swap_globals_t         swap_globals;  // 5
    void *                    load_name;  // 6
    mp_load_global_t          load_global;  // 7
    void *                    load_build_class;  // 8
    void *                    load_attr;  // 9
    void *                    load_method;  // 10
    void *                    load_super_method;  // 11
    void *                    store_name;  // 12
    mp_store_global_t         store_global;  // 13
    void *                    store_attr;  // 14
    void *                    obj_subscr;  // 15
    void *                    obj_is_true;  // 16
    void *                    unary_op;  // 17
    void *                    binary_op;  // 18
    void *                    new_tuple;  // 19
    void *                    new_list;  // 20
    void *                    new_dict;  // 21
    void *                    new_set;  // 22
    void *                    set_store;  // 23
    void *                    list_append;  // 24
    void *                    dict_store;  // 25
    void *                    make_function_from_proto_fun;  // 26
    void *                    call_function_n_kw;  // 27
    void *                    call_method_n_kw;  // 28
    void *                    call_method_n_kw_var;  // 29
    void *                    getiter;  // 30
    void *                    iternext;  // 31
    void *                    nlr_push;  // 32
    void *                    nlr_pop;  // 33
    void *                    raise;  // 34
    void *                    import_name;  // 35
    void *                    import_from;  // 36
    void *                    import_all;  // 37
    void *                    new_slice;  // 38
    void *                    unpack_sequence;  // 39
    void *                    unpack_ex;  // 40
    void *                    delete_name;  // 41
    void *                    delete_global;  // 42
    void *                    new_closure;  // 43
    void *                    arg_check_num_sig;  // 44
    void *                    setup_code_state_native;  // 45
    void *                    small_int_floor_divide;  // 46
    void *                    small_int_modulo;  // 47
    void *                    yield_from;  // 48
    void *                    setjmp_;  // 49
    void *                    memset_;  // 50
    void *                    memmove_;  // 51
    mp_realloc__t             realloc_;  // 52
    void *                    printf_;  // 53
    void *                    vprintf_;  // 54
    mp_raise_msg_t            raise_msg;  // 55
    void *                    obj_get_type;  // 56
    void *                    obj_new_str;  // 57
    void *                    obj_new_bytes;  // 58
    void *                    obj_new_bytearray_by_ref;  // 59
    mp_obj_new_float_from_f_t obj_new_float_from_f;  // 60
    void *                    obj_new_float_from_d;  // 61
    mp_obj_get_float_to_f_t   obj_get_float_to_f;  // 62
    void *                    obj_get_float_to_d;  // 63
    void *                    load_method_maybe;  // 64
    mp_get_buffer_t           get_buffer;  // 65
    void *                    get_stream_raise;  // 66
    void *                    arg_parse_all;  // 67
    void *                    arg_parse_all_kw_array;  // 68
    void *                    binary_get_size;  // 69
    void *                    binary_get_val_array;  // 70
    void *                    binary_set_val_array;  // 71
    void *                    plat_print;  // 72
    void *                    type_type;  // 73
    void *                    type_str;  // 74
    void *                    type_list;  // 75
    void *                    type_dict;  // 76
    void *                    type_fun_builtin_0;  // 77
    void *                    type_fun_builtin_1;  // 78
    void *                    type_fun_builtin_2;  // 79
    void *                    type_fun_builtin_3;  // 80
    mp_type_fun_builtin_var_t type_fun_builtin_var;  // 81
    void *                    type_Exception;  // 82
    void *                    stream_read_obj;  // 83
    void *                    stream_readinto_obj;  // 84
    void *                    stream_unbuffered_readline_obj;  // 85
    void *                    stream_write_obj;  // 86
} mp_fun_table_t;

// Indices into the .mpy's qstr table: the file name, then each name the C file uses as QSTR(name).
enum { Q_FILE, Q_N_PARAMS, Q_ValueError, Q_WORK, Q_adam, Q_forward, Q_loss_and_grad };
