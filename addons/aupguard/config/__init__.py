"""Config: the school's policy file, its timetable and the user files it names, read and checked before anything runs."""
