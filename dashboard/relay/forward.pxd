# Cython's declarations for forward.py, which setup.py compiles (dashboard/hotpath.py): Forward's
# fields as C fields, and `feed`, run for every read of a stream, with its bytes typed.
cimport cython


cdef class Forward:
    cdef public object write, plain, key, shape, secrets, measure, clock
    cdef public bytes held
    cdef public double last

    @cython.locals(held=bytes, buf=bytes, events=bytes, text=bytes, prefix=bytes, suffix=bytes, end=Py_ssize_t)
    cpdef object feed(self, bytes data)
