# Cython's declarations for forward.py, compiled by setup.py: Forward's fields as C fields.
cdef class Forward:
    cdef public object write, plain, key, shape, secrets, measure, clock
    cdef public bytes held
    cdef public double last
