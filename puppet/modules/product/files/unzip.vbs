' unzip.vbs ZIP DEST: unpack ZIP into DEST with the Windows shell (no PowerShell needed).
' Unpacks into DEST.partial first, then renames it to DEST and writes DEST\.unpacked,
' so an interrupted run leaves no half-unpacked release behind (Puppet's exec
' `creates` looks for .unpacked).
Option Explicit
Dim fso, shell, zip, dest, partial, items
Set fso = CreateObject("Scripting.FileSystemObject")
Set shell = CreateObject("Shell.Application")
If WScript.Arguments.Count <> 2 Then
  WScript.Echo "usage: unzip.vbs ZIP DEST"
  WScript.Quit 2
End If
zip = fso.GetAbsolutePathName(WScript.Arguments(0))
dest = fso.GetAbsolutePathName(WScript.Arguments(1))
partial = dest & ".partial"
If Not fso.FileExists(zip) Then
  WScript.Echo "no such file: " & zip
  WScript.Quit 3
End If
If fso.FolderExists(partial) Then fso.DeleteFolder partial, True
fso.CreateFolder partial
Set items = shell.NameSpace(zip).Items
' 4 = no progress dialog, 16 = yes to all, 512 = no new-folder prompt, 1024 = no error UI
shell.NameSpace(partial).CopyHere items, 4 + 16 + 512 + 1024
' CopyHere returns before the copy ends: wait until every item arrived
Do While shell.NameSpace(partial).Items.Count < items.Count
  WScript.Sleep 200
Loop
If fso.FolderExists(dest) Then fso.DeleteFolder dest, True
fso.MoveFolder partial, dest
fso.CreateTextFile(dest & "\.unpacked", True).Close
WScript.Quit 0
