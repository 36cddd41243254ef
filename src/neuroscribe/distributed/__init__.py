"""Running neuroscribe on a Ray cluster: distributed recording and jobs (`--ray ADDRESS`).

Ray is an optional extra (`pip install neuroscribe[ray]`), imported only when used.
"""
