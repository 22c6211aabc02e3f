# A busy loop: it ends only at the CPU limit. Prints nothing.
while True:
    pass
