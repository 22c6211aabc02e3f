# A race against the uploader: for 3 s a thread flips race.txt between a
# symlink to ARGS "target", a FIFO and a regular file holding "benign",
# while the client runs cell after cell (each upload sees race.txt in
# whatever state it is). The benign file is written under a name starting
# with "." (not uploaded) and renamed. Prints nothing; the thread runs on
# after the cell.
import os, threading, time


def flip(stop, target):
    while time.time() < stop:
        try:
            os.symlink(target, ".race.tmp")
            os.replace(".race.tmp", "race.txt")
            with open(".race.new", "w") as f:
                f.write("benign")
            os.replace(".race.new", "race.txt")
            os.mkfifo(".race.tmp")
            os.replace(".race.tmp", "race.txt")
            with open(".race.new", "w") as f:
                f.write("benign")
            os.replace(".race.new", "race.txt")
        except OSError:
            pass
        time.sleep(0.002)  # the CPU limit is a few seconds


threading.Thread(target=flip, args=(time.time() + 3, ARGS["target"]), daemon=True).start()
