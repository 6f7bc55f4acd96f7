"""
Worker processes behind one control process (C{--workers N}).
"""
