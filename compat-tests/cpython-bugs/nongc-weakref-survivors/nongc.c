/* nongc: a static C type that is NOT tracked by the GC and takes weakrefs, and does
   nothing else (its dealloc clears weakrefs unconditionally and frees). Stands in for
   cffi's owning cdata in repro.py; see README.md. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
typedef struct { PyObject_HEAD PyObject *weakreflist; long data[4]; } NonGCObject;
static void nongc_dealloc(NonGCObject *o) {
    PyObject_ClearWeakRefs((PyObject *)o);
    Py_TYPE(o)->tp_free((PyObject *)o);
}
static PyObject *nongc_new(PyTypeObject *t, PyObject *a, PyObject *k) {
    NonGCObject *o = (NonGCObject *)t->tp_alloc(t, 0);
    return (PyObject *)o;
}
static PyTypeObject NonGC_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nongc.NonGC", .tp_basicsize = sizeof(NonGCObject),
    .tp_dealloc = (destructor)nongc_dealloc, .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_weaklistoffset = offsetof(NonGCObject, weakreflist), .tp_new = nongc_new,
};
static struct PyModuleDef_Slot slots[] = {
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL}};
static int exec_mod(PyObject *m) { return 0; }
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "nongc", NULL, 0, NULL};
PyMODINIT_FUNC PyInit_nongc(void) {
    if (PyType_Ready(&NonGC_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
#ifdef Py_GIL_DISABLED
    PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    Py_INCREF(&NonGC_Type);
    PyModule_AddObject(m, "NonGC", (PyObject *)&NonGC_Type);
    return m;
}
