from wsproxy.cli import main

# Guarded: ``--workers N`` spawns its workers with multiprocessing, which imports this module
# again in each of them (as ``__mp_main__``).
if __name__ == "__main__":
    raise SystemExit(main())
