"""Ports that run on several processes through torch.distributed (tensor parallel): `dist:N:FILE.py:FACTORY`.

    candidate.py   the Candidate: its spec, its requests run on every rank, the ranks' traces merged
    group.py       the rank processes: started, asked, awaited against a deadline, stopped
    worker.py      what each rank process runs: join the group, build the port, serve requests
    files.py       a shards manifest of rank traces written elsewhere, as a candidate
"""
