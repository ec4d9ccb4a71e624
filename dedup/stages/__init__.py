"""The stages: embed -> find -> select -> write. Each reads and writes files, and each can run alone."""
